package loadgen

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sync"
	"time"
)

// Problem is one acknowledged write that did not read back exactly once.
type Problem struct {
	Record Record `json:"record"`
	// Reason says what was wrong ("missing", "sha256 mismatch ...", "stored 2 times", or the
	// read error).
	Reason string `json:"reason"`
}

// VerifyResult counts the outcome of reading back every recorded write.
type VerifyResult struct {
	Checked    int `json:"checked"`
	OK         int `json:"ok"`
	Missing    int `json:"missing"`
	Mismatched int `json:"mismatched"`
	// Duplicated are writes found more than once: the same row twice, or the same payload
	// stored under two ids (a photo's bytes, a comment's body, a username).
	Duplicated int `json:"duplicated"`
	// Errors are records that could not be checked (server errors, timeouts).
	Errors int `json:"errors"`
	// Problems lists up to 100 failures.
	Problems []Problem `json:"problems,omitempty"`
}

// Clean reports whether every record read back intact, exactly once.
func (v VerifyResult) Clean() bool { return v.Checked == v.OK }

var errMissing = errors.New("missing")

type mismatch struct{ what string }

// Error describes the mismatch.
func (m mismatch) Error() string { return m.what }

type duplicate struct{ what string }

// Error describes the duplicate.
func (d duplicate) Error() string { return d.what }

// Verify checks every record of recordFile through the API at baseURL (8 requests at a time):
// each acknowledged write must be present exactly once, with the recorded payload.
//
// Every read it uses is routed by the app's current shard map straight to Postgres (none is
// served from memcached), so a write is looked for wherever its shard lives now:
//   - user: GET /users/{id} has the recorded username, and no other recorded user has it
//     (usernames are UNIQUE in the shard their hash names, so a second id is a lost constraint);
//   - follow: the followee appears once in the follower's /following and the follower once in
//     the followee's /followers (the two copies the app writes);
//   - photo: the id appears once in the owner's /photos listing (all pages) with the recorded
//     owner and sha256, no other photo of the owner has those bytes (a write applied twice),
//     and the image in S3 has that sha256;
//   - like: the user appears once in the photo's /likes;
//   - comment: the id appears once in the photo's /comments with the recorded body, and no
//     other comment there has that body.
//
// Listings are fetched once per owner, follower, followee or photo and shared by its records.
// Rows left on a shard's former node after a move are not looked at: that node is no longer
// in the map, and cleaning it is the shard mover's job. A malformed record file is an error;
// failed reads are counted in the result.
func Verify(ctx context.Context, baseURL, recordFile string) (VerifyResult, error) {
	recs, err := readRecords(recordFile)
	if err != nil {
		return VerifyResult{}, err
	}
	v := &verifier{c: &http.Client{Timeout: 10 * time.Second}, base: baseURL, memo: map[string]*memoEntry{},
		usernames: map[string][]int64{}}
	for _, r := range recs {
		if r.Kind == "user" && !contains(v.usernames[r.SHA256], r.ID) {
			v.usernames[r.SHA256] = append(v.usernames[r.SHA256], r.ID)
		}
	}
	var res VerifyResult
	var mu sync.Mutex
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for _, rec := range recs {
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			err := v.check(ctx, rec)
			mu.Lock()
			defer mu.Unlock()
			res.count(rec, err)
		})
	}
	wg.Wait()
	return res, ctx.Err()
}

func (res *VerifyResult) count(rec Record, err error) {
	res.Checked++
	var mm mismatch
	var dup duplicate
	switch {
	case err == nil:
		res.OK++
		return
	case errors.Is(err, errMissing):
		res.Missing++
	case errors.As(err, &mm):
		res.Mismatched++
	case errors.As(err, &dup):
		res.Duplicated++
	default:
		res.Errors++
	}
	if len(res.Problems) < 100 {
		res.Problems = append(res.Problems, Problem{Record: rec, Reason: err.Error()})
	}
}

func readRecords(file string) ([]Record, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	defer f.Close()
	var recs []Record
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("verify: %s:%d: %w", file, n, err)
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("verify: read %s: %w", file, err)
	}
	return recs, nil
}

type verifier struct {
	c    *http.Client
	base string
	// usernames maps a recorded username digest to the user ids acknowledged with it.
	usernames map[string][]int64

	mu   sync.Mutex
	memo map[string]*memoEntry
}

type memoEntry struct {
	once sync.Once
	val  any
	err  error
}

// cached runs fetch once per key, however many records need it.
func cached[T any](v *verifier, key string, fetch func() (T, error)) (T, error) {
	v.mu.Lock()
	e := v.memo[key]
	if e == nil {
		e = &memoEntry{}
		v.memo[key] = e
	}
	v.mu.Unlock()
	e.once.Do(func() { e.val, e.err = fetch() })
	val, _ := e.val.(T)
	return val, e.err
}

// get fetches path into out; 404 is errMissing.
func (v *verifier) get(ctx context.Context, path string, out any) error {
	err := call(ctx, v.c, v.base, "GET", path, "", nil, http.StatusOK, out)
	var se *StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		return fmt.Errorf("%s: %w", path, errMissing)
	}
	return err
}

type listedPhoto struct {
	ID     int64  `json:"id"`
	UserID int64  `json:"user_id"`
	SHA256 string `json:"sha256"`
}

type listedComment struct {
	ID   int64  `json:"id"`
	Body string `json:"body"`
}

// ownerPhotos pages through GET /users/{owner}/photos, newest first.
func (v *verifier) ownerPhotos(ctx context.Context, owner int64) ([]listedPhoto, error) {
	return cached(v, fmt.Sprintf("photos %d", owner), func() ([]listedPhoto, error) {
		var all []listedPhoto
		for before := int64(0); ; {
			var page struct {
				Photos     []listedPhoto `json:"photos"`
				NextBefore int64         `json:"next_before"`
			}
			if err := v.get(ctx, fmt.Sprintf("/users/%d/photos?limit=100&before=%d", owner, before), &page); err != nil {
				return nil, err
			}
			all = append(all, page.Photos...)
			if page.NextBefore == 0 {
				return all, nil
			}
			before = page.NextBefore
		}
	})
}

// ids fetches a JSON object's id-list field at path, once.
func (v *verifier) ids(ctx context.Context, path, field string) ([]int64, error) {
	return cached(v, path, func() ([]int64, error) {
		var m map[string]json.RawMessage
		if err := v.get(ctx, path, &m); err != nil {
			return nil, err
		}
		var ids []int64
		if err := json.Unmarshal(m[field], &ids); err != nil {
			return nil, fmt.Errorf("GET %s: field %q: %w", path, field, err)
		}
		return ids, nil
	})
}

func (v *verifier) comments(ctx context.Context, photo int64) ([]listedComment, error) {
	return cached(v, fmt.Sprintf("comments %d", photo), func() ([]listedComment, error) {
		var cs struct{ Comments []listedComment }
		err := v.get(ctx, fmt.Sprintf("/photos/%d/comments", photo), &cs)
		return cs.Comments, err
	})
}

// once turns a count of occurrences into nil (1), errMissing (0) or a duplicate.
func once(n int, format string, args ...any) error {
	switch {
	case n == 1:
		return nil
	case n == 0:
		return fmt.Errorf(format+": %w", append(args, errMissing)...)
	}
	return duplicate{fmt.Sprintf(format+": stored %d times", append(args, n)...)}
}

func (v *verifier) check(ctx context.Context, r Record) error {
	switch r.Kind {
	case "user":
		return v.checkUser(ctx, r)
	case "follow":
		following, err := v.ids(ctx, fmt.Sprintf("/users/%d/following", r.ID), "following")
		if err != nil {
			return err
		}
		if err := once(countOf(following, r.Ref), "follow %d->%d in the follower's shard", r.ID, r.Ref); err != nil {
			return err
		}
		followers, err := v.ids(ctx, fmt.Sprintf("/users/%d/followers", r.Ref), "followers")
		if err != nil {
			return err
		}
		return once(countOf(followers, r.ID), "follow %d->%d in the followee's shard", r.ID, r.Ref)
	case "photo":
		return v.checkPhoto(ctx, r)
	case "like":
		likers, err := v.ids(ctx, fmt.Sprintf("/photos/%d/likes", r.ID), "user_ids")
		if err != nil {
			return err
		}
		return once(countOf(likers, r.Ref), "like of %d by %d", r.ID, r.Ref)
	case "comment":
		return v.checkComment(ctx, r)
	}
	return fmt.Errorf("unknown record kind %q", r.Kind)
}

func (v *verifier) checkUser(ctx context.Context, r Record) error {
	var u struct{ Username string }
	if err := v.get(ctx, fmt.Sprintf("/users/%d", r.ID), &u); err != nil {
		return err
	}
	if digest([]byte(u.Username)) != r.SHA256 {
		return mismatch{fmt.Sprintf("user %d: username %q does not match the recorded sha256", r.ID, u.Username)}
	}
	if ids := v.usernames[r.SHA256]; len(ids) > 1 {
		return duplicate{fmt.Sprintf("user %d: username %q was acknowledged for users %v", r.ID, u.Username, ids)}
	}
	return nil
}

func (v *verifier) checkPhoto(ctx context.Context, r Record) error {
	ps, err := v.ownerPhotos(ctx, r.Ref)
	if err != nil {
		return err
	}
	var found []listedPhoto
	sameBytes := 0
	for _, p := range ps {
		if p.ID == r.ID {
			found = append(found, p)
		}
		if p.SHA256 == r.SHA256 {
			sameBytes++
		}
	}
	if err := once(len(found), "photo %d in the photos of user %d", r.ID, r.Ref); err != nil {
		return err
	}
	if p := found[0]; p.UserID != r.Ref || p.SHA256 != r.SHA256 {
		return mismatch{fmt.Sprintf("photo %d: owner %d sha256 %s, recorded %d %s", r.ID, p.UserID, p.SHA256, r.Ref, r.SHA256)}
	}
	if sameBytes > 1 {
		return duplicate{fmt.Sprintf("photo %d: user %d has %d photos with these bytes", r.ID, r.Ref, sameBytes)}
	}
	return v.checkImage(ctx, r)
}

func (v *verifier) checkComment(ctx context.Context, r Record) error {
	cs, err := v.comments(ctx, r.Ref)
	if err != nil {
		return err
	}
	var found []listedComment
	sameBody := 0
	for _, c := range cs {
		if c.ID == r.ID {
			found = append(found, c)
		}
		if digest([]byte(c.Body)) == r.SHA256 {
			sameBody++
		}
	}
	if err := once(len(found), "comment %d on photo %d", r.ID, r.Ref); err != nil {
		return err
	}
	if digest([]byte(found[0].Body)) != r.SHA256 {
		return mismatch{fmt.Sprintf("comment %d: body does not match the recorded sha256", r.ID)}
	}
	if sameBody > 1 {
		return duplicate{fmt.Sprintf("comment %d: photo %d has %d comments with this body", r.ID, r.Ref, sameBody)}
	}
	return nil
}

func countOf(ids []int64, id int64) int {
	n := 0
	for _, x := range ids {
		if x == id {
			n++
		}
	}
	return n
}

func contains(ids []int64, id int64) bool { return countOf(ids, id) > 0 }

// checkImage downloads the photo bytes (from S3 through the app) and compares the digest.
func (v *verifier) checkImage(ctx context.Context, r Record) error {
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/photos/%d/image", v.base, r.ID), nil)
	if err != nil {
		return err
	}
	resp, err := v.c.Do(req)
	if err != nil {
		return fmt.Errorf("photo %d image: %w", r.ID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("photo %d image: %w", r.ID, errMissing)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("photo %d image: HTTP %d", r.ID, resp.StatusCode)
	}
	h := sha256.New()
	if _, err := io.Copy(h, resp.Body); err != nil {
		return fmt.Errorf("photo %d image: %w", r.ID, err)
	}
	if hex.EncodeToString(h.Sum(nil)) != r.SHA256 {
		return mismatch{fmt.Sprintf("photo %d: image bytes do not match the recorded sha256", r.ID)}
	}
	return nil
}
