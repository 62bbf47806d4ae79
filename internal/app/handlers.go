package app

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/instactl/instactl/shardmap"
	"github.com/instactl/instactl/switches"
)

func (a *App) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /users", a.handleSignUp)
	mux.HandleFunc("GET /users/{id}", a.handleGetUser)
	mux.HandleFunc("POST /users/{id}/follow/{target}", a.handleFollow(true))
	mux.HandleFunc("DELETE /users/{id}/follow/{target}", a.handleFollow(false))
	mux.HandleFunc("GET /users/{id}/following", a.handleFollowing)
	mux.HandleFunc("GET /users/{id}/followers", a.handleFollowers)
	mux.HandleFunc("GET /users/{id}/feed", a.handleFeed)
	mux.HandleFunc("GET /users/{id}/photos", a.handleUserPhotos)
	mux.HandleFunc("POST /photos", a.handleUpload)
	mux.HandleFunc("GET /photos/{id}", a.handleGetPhoto)
	mux.HandleFunc("GET /photos/{id}/image", a.handleImage)
	mux.HandleFunc("POST /photos/{id}/likes", a.handleLike)
	mux.HandleFunc("GET /photos/{id}/likes", a.handleLikers)
	mux.HandleFunc("POST /photos/{id}/comments", a.handleComment)
	mux.HandleFunc("GET /photos/{id}/comments", a.handleComments)
	mux.HandleFunc("GET /healthz", a.handleHealth)
	mux.HandleFunc("GET "+switches.Path, a.handleSwitches)
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.metrics.reg, promhttp.HandlerOpts{}))
	return mux
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

// fail maps an error to a status: 404, 409, 503 for a shard still fenced or a node whose primary
// went away, 400 for bad input, else 500.
func (a *App) fail(w http.ResponseWriter, r *http.Request, err error) {
	code := http.StatusInternalServerError
	var bad badRequest
	switch {
	case errors.As(err, &bad):
		code = http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		code = http.StatusNotFound
	case errors.Is(err, ErrExists):
		code = http.StatusConflict
	case shardmap.IsFenced(err) || errors.Is(err, errStillFenced) || errors.Is(err, errTopologyUnchanged) || primaryLost(err):
		code = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "1")
	}
	if code == http.StatusInternalServerError {
		a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

type badRequest struct{ msg string }

// Error returns the message shown to the client.
func (b badRequest) Error() string { return b.msg }

func pathID(r *http.Request, name string) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue(name), 10, 64)
	if err != nil || id <= 0 {
		return 0, badRequest{fmt.Sprintf("%s must be a positive integer (got %q)", name, r.PathValue(name))}
	}
	return id, nil
}

func queryInt(r *http.Request, name string, def int64) (int64, error) {
	s := r.URL.Query().Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, badRequest{fmt.Sprintf("%s must be a non-negative integer (got %q)", name, s)}
	}
	return n, nil
}

func (a *App) handleSignUp(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Username string `json:"username"`
	}
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil || req.Username == "" {
		a.fail(w, r, badRequest{`body must be {"username": "..."}`})
		return
	}
	u, err := a.store.CreateUser(r.Context(), req.Username)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, u)
}

func (a *App) handleGetUser(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id")
	if err == nil {
		var u User
		if u, err = a.store.GetUser(r.Context(), id); err == nil {
			writeJSON(w, http.StatusOK, u)
			return
		}
	}
	a.fail(w, r, err)
}

func (a *App) handleFollow(on bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id, err := pathID(r, "id")
		if err != nil {
			a.fail(w, r, err)
			return
		}
		target, err := pathID(r, "target")
		if err != nil {
			a.fail(w, r, err)
			return
		}
		if id == target {
			a.fail(w, r, badRequest{"cannot follow yourself"})
			return
		}
		if err := a.store.Follow(r.Context(), id, target, on); err != nil {
			a.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"follower": id, "followee": target, "following": on})
	}
}

func (a *App) handleFollowing(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id")
	if err == nil {
		var ids []int64
		if ids, err = a.store.Following(r.Context(), id); err == nil {
			writeJSON(w, http.StatusOK, map[string]any{"user_id": id, "following": nonNil(ids)})
			return
		}
	}
	a.fail(w, r, err)
}

// handleFollowers reads the followee side of follows (the copy fan-out uses) from id's shard.
func (a *App) handleFollowers(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id")
	if err == nil {
		var ids []int64
		if ids, err = a.store.Followers(r.Context(), id); err == nil {
			writeJSON(w, http.StatusOK, map[string]any{"user_id": id, "followers": nonNil(ids)})
			return
		}
	}
	a.fail(w, r, err)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// pageParams reads ?before=ID&limit=N (limit default 20, max 100).
func pageParams(r *http.Request) (before int64, limit int, err error) {
	if before, err = queryInt(r, "before", 0); err != nil {
		return 0, 0, err
	}
	l, err := queryInt(r, "limit", 20)
	if err != nil {
		return 0, 0, err
	}
	return before, int(min(max(l, 1), 100)), nil
}

type page struct {
	Photos     []Photo `json:"photos"`
	NextBefore int64   `json:"next_before,omitempty"`
}

func newPage(ps []Photo, limit int) page {
	p := page{Photos: nonNil(ps)}
	if len(ps) == limit {
		p.NextBefore = ps[len(ps)-1].ID
	}
	return p
}

func (a *App) handleFeed(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	before, limit, err := pageParams(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ids, err := a.feeds.Page(r.Context(), id, before, limit)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if !a.switches.On(switches.FeedRanking) {
		p, err := a.feedFromRedis(r.Context(), ids, limit)
		if err != nil {
			a.fail(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, p)
		return
	}
	ps, err := a.photos(r.Context(), ids)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newPage(ps, limit))
}

func (a *App) handleUserPhotos(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	before, limit, err := pageParams(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ps, err := a.store.UserPhotos(r.Context(), id, before, limit)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, newPage(ps, limit))
}

// readUpload accepts multipart/form-data (fields user_id, caption, file "photo") or a raw body
// with ?user_id=&caption= and the image's Content-Type.
func (a *App) readUpload(r *http.Request) (Photo, []byte, error) {
	r.Body = http.MaxBytesReader(nil, r.Body, a.cfg.MaxUploadBytes+1<<20)
	var p Photo
	var body []byte
	var owner string
	if strings.HasPrefix(r.Header.Get("Content-Type"), "multipart/form-data") {
		if err := r.ParseMultipartForm(8 << 20); err != nil {
			return p, nil, badRequest{"bad multipart form: " + err.Error()}
		}
		owner, p.Caption = r.FormValue("user_id"), r.FormValue("caption")
		f, hdr, err := r.FormFile("photo")
		if err != nil {
			return p, nil, badRequest{`multipart form needs a file field "photo"`}
		}
		defer f.Close()
		p.ContentType = hdr.Header.Get("Content-Type")
		if body, err = io.ReadAll(f); err != nil {
			return p, nil, fmt.Errorf("read upload: %w", err)
		}
	} else {
		owner, p.Caption = r.URL.Query().Get("user_id"), r.URL.Query().Get("caption")
		p.ContentType = r.Header.Get("Content-Type")
		var err error
		if body, err = io.ReadAll(r.Body); err != nil {
			return p, nil, badRequest{"read upload: " + err.Error()}
		}
	}
	var err error
	if p.UserID, err = strconv.ParseInt(owner, 10, 64); err != nil || p.UserID <= 0 {
		return p, nil, badRequest{fmt.Sprintf("user_id must be a positive integer (got %q)", owner)}
	}
	if len(body) == 0 || int64(len(body)) > a.cfg.MaxUploadBytes {
		return p, nil, badRequest{fmt.Sprintf("photo must be 1..%d bytes (got %d)", a.cfg.MaxUploadBytes, len(body))}
	}
	if p.ContentType == "" {
		p.ContentType = http.DetectContentType(body)
	}
	return p, body, nil
}

// handleUpload: bytes to S3 under a content-addressed key, then the row in the owner's shard
// (its id carries the owner's shard), then the owner index, cache and a fan-out job. The write is
// acknowledged once the row commits; a failed enqueue is logged and counted, not returned.
func (a *App) handleUpload(w http.ResponseWriter, r *http.Request) {
	p, body, err := a.readUpload(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ctx := r.Context()
	if _, err := a.store.GetUser(ctx, p.UserID); err != nil {
		a.fail(w, r, err)
		return
	}
	sum := sha256.Sum256(body)
	p.SHA256 = hex.EncodeToString(sum[:])
	p.Size = int64(len(body))
	p.S3Key = fmt.Sprintf("photos/%d/%s", p.UserID, p.SHA256)
	if err := a.blobs.Put(ctx, p.S3Key, p.ContentType, body); err != nil {
		a.fail(w, r, err)
		return
	}
	if err := a.store.CreatePhoto(ctx, &p); err != nil {
		a.fail(w, r, fmt.Errorf("create photo: %w", err))
		return
	}
	if err := a.owners.Set(ctx, p.ID, p.UserID); err != nil {
		a.log.Warn("owner index", "photo", p.ID, "err", err)
	}
	_ = a.cache.Set(p)
	if err := a.queue.Enqueue(ctx, "fanout", fanoutJob{PhotoID: p.ID}); err != nil {
		a.metrics.enqueueErrs.Inc()
		a.log.Error("fan-out enqueue", "photo", p.ID, "err", err)
	}
	p.URL = PhotoURL(a.cfg.PhotoBaseURL, p.S3Key)
	writeJSON(w, http.StatusCreated, p)
}

func (a *App) handleGetPhoto(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ps, err := a.photos(r.Context(), []int64{id})
	if err != nil {
		a.fail(w, r, err)
		return
	}
	if len(ps) == 0 {
		a.fail(w, r, fmt.Errorf("photo %d: %w", id, ErrNotFound))
		return
	}
	writeJSON(w, http.StatusOK, ps[0])
}

func (a *App) handleImage(w http.ResponseWriter, r *http.Request) {
	id, err := pathID(r, "id")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	ps, err := a.photos(r.Context(), []int64{id})
	if err == nil && len(ps) == 0 {
		err = fmt.Errorf("photo %d: %w", id, ErrNotFound)
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	body, err := a.blobs.Get(r.Context(), ps[0].S3Key)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	defer body.Close()
	w.Header().Set("Content-Type", ps[0].ContentType)
	w.Header().Set("Content-Length", strconv.FormatInt(ps[0].Size, 10))
	_, _ = io.Copy(w, body)
}

func decodeUser(r *http.Request, extra any) (int64, error) {
	var req struct {
		UserID int64 `json:"user_id"`
	}
	raw, err := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	if err != nil {
		return 0, badRequest{"read body: " + err.Error()}
	}
	if json.Unmarshal(raw, &req) != nil || req.UserID <= 0 {
		return 0, badRequest{`body must be JSON with a positive "user_id"`}
	}
	if extra != nil {
		_ = json.Unmarshal(raw, extra)
	}
	return req.UserID, nil
}

func (a *App) handleLike(w http.ResponseWriter, r *http.Request) {
	photo, err := pathID(r, "id")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	user, err := decodeUser(r, nil)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	n, err := a.store.Like(r.Context(), photo, user)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	_ = a.cache.Delete(photo)
	writeJSON(w, http.StatusOK, map[string]any{"photo_id": photo, "user_id": user, "like_count": n})
}

func (a *App) handleLikers(w http.ResponseWriter, r *http.Request) {
	photo, err := pathID(r, "id")
	if err == nil {
		var ids []int64
		if ids, err = a.store.Likers(r.Context(), photo); err == nil {
			writeJSON(w, http.StatusOK, map[string]any{"photo_id": photo, "user_ids": nonNil(ids)})
			return
		}
	}
	a.fail(w, r, err)
}

func (a *App) handleComment(w http.ResponseWriter, r *http.Request) {
	photo, err := pathID(r, "id")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	var extra struct {
		Body string `json:"body"`
	}
	user, err := decodeUser(r, &extra)
	if err == nil && extra.Body == "" {
		err = badRequest{`comment needs a non-empty "body"`}
	}
	if err != nil {
		a.fail(w, r, err)
		return
	}
	c := Comment{PhotoID: photo, UserID: user, Body: extra.Body}
	if err := a.store.AddComment(r.Context(), &c); err != nil {
		a.fail(w, r, err)
		return
	}
	_ = a.cache.Delete(photo)
	writeJSON(w, http.StatusCreated, c)
}

func (a *App) handleComments(w http.ResponseWriter, r *http.Request) {
	photo, err := pathID(r, "id")
	if err == nil {
		var cs []Comment
		if cs, err = a.store.Comments(r.Context(), photo); err == nil {
			writeJSON(w, http.StatusOK, map[string]any{"photo_id": photo, "comments": nonNil(cs)})
			return
		}
	}
	a.fail(w, r, err)
}

// handleHealth answers 200 only when the control database, every node, Redis and memcached
// answer within a second, and the server is not shutting down.
func (a *App) handleHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), time.Second)
	defer cancel()
	checks := map[string]string{}
	var mu sync.Mutex
	set := func(name string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			checks[name] = err.Error()
		} else {
			checks[name] = "ok"
		}
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for name, err := range a.router.Ping(ctx) {
			set("postgres:"+name, err)
		}
	})
	wg.Go(func() { set("redis", a.rdb.Ping(ctx).Err()) })
	wg.Go(func() { set("memcached", a.mc.Ping()) })
	wg.Wait()
	code := http.StatusOK
	for _, v := range checks {
		if v != "ok" {
			code = http.StatusServiceUnavailable
		}
	}
	if a.shuttingDown.Load() {
		code = http.StatusServiceUnavailable
		checks["server"] = "shutting down"
	}
	writeJSON(w, code, map[string]any{"status": http.StatusText(code), "checks": checks,
		"version": a.build.Version, "commit": a.build.Commit, "release": a.cfg.Release,
		"shard_map_version": a.router.Map().Version})
}
