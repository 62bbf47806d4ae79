package app

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/instactl/instactl/shardmap"
)

// Errors the HTTP layer maps to status codes.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
)

// User is a signed-up user.
type User struct {
	ID        int64     `json:"id"`
	Username  string    `json:"username"`
	CreatedAt time.Time `json:"created_at"`
}

// Photo is a photo's metadata; the bytes live in S3 under S3Key.
type Photo struct {
	ID     int64  `json:"id"`
	UserID int64  `json:"user_id"`
	S3Key  string `json:"s3_key"`
	// URL is where clients fetch the bytes (PhotoURL); set as the photo is served, never
	// stored (db:"-": rows are read into Photo by position).
	URL          string    `json:"url,omitempty" db:"-"`
	ContentType  string    `json:"content_type"`
	Size         int64     `json:"size"`
	SHA256       string    `json:"sha256"`
	Caption      string    `json:"caption"`
	LikeCount    int       `json:"like_count"`
	CommentCount int       `json:"comment_count"`
	CreatedAt    time.Time `json:"created_at"`
}

// Comment is a comment on a photo, stored in the photo's shard.
type Comment struct {
	ID        int64     `json:"id"`
	PhotoID   int64     `json:"photo_id"`
	UserID    int64     `json:"user_id"`
	Body      string    `json:"body"`
	CreatedAt time.Time `json:"created_at"`
}

// Store is the sharded Postgres data layer; every method routes through the Router.
type Store struct {
	r         *Router
	fenceWait time.Duration
}

// sq expands {s} to the schema of shard.
func sq(shard int, sql string) string {
	return strings.ReplaceAll(sql, "{s}", shardmap.SchemaName(shard))
}

func (s *Store) do(ctx context.Context, shard int, fn func(context.Context, *pgxpool.Pool) error) error {
	return s.r.Do(ctx, shard, s.fenceWait, fn)
}

// ShardForUsername places a new user: a hash of the username, so one username always maps to
// one shard and the shard's UNIQUE constraint makes usernames globally unique.
func (s *Store) ShardForUsername(username string) int {
	return ShardForUsername(username, s.r.Map().LogicalShards())
}

// ShardForUsername is the placement rule: FNV-1a of the username modulo the logical shards.
func ShardForUsername(username string, logicalShards int) int {
	h := fnv.New32a()
	h.Write([]byte(username))
	return int(h.Sum32() % uint32(logicalShards))
}

// CreateUser signs a user up; the id comes from the shard's next_id().
func (s *Store) CreateUser(ctx context.Context, username string) (User, error) {
	shard := s.ShardForUsername(username)
	u := User{Username: username}
	err := s.do(ctx, shard, func(ctx context.Context, db *pgxpool.Pool) error {
		return db.QueryRow(ctx, sq(shard, `INSERT INTO {s}.users (username) VALUES ($1) RETURNING id, created_at`),
			username).Scan(&u.ID, &u.CreatedAt)
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return u, fmt.Errorf("username %q: %w", username, ErrExists)
	}
	if err != nil {
		return u, fmt.Errorf("create user: %w", err)
	}
	return u, nil
}

// GetUser reads a user from the shard its id names.
func (s *Store) GetUser(ctx context.Context, id int64) (User, error) {
	shard := shardmap.ShardOf(id)
	if err := s.checkShard(shard); err != nil {
		return User{}, err
	}
	u := User{ID: id}
	err := s.do(ctx, shard, func(ctx context.Context, db *pgxpool.Pool) error {
		return db.QueryRow(ctx, sq(shard, `SELECT username, created_at FROM {s}.users WHERE id = $1`), id).
			Scan(&u.Username, &u.CreatedAt)
	})
	return u, notFound(err, "user %d", id)
}

func (s *Store) checkShard(shard int) error {
	if shard >= s.r.Map().LogicalShards() {
		return fmt.Errorf("shard %d does not exist: %w", shard, ErrNotFound)
	}
	return nil
}

func notFound(err error, format string, args ...any) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf(format+": %w", append(args, ErrNotFound)...)
	}
	if err != nil {
		return fmt.Errorf(format+": %w", append(args, err)...)
	}
	return nil
}

// Follow records follower -> followee in both users' shards (each write idempotent), so the
// follower's shard answers "whom do I follow" and the followee's "who follows me" (fan-out).
func (s *Store) Follow(ctx context.Context, follower, followee int64, on bool) error {
	if _, err := s.GetUser(ctx, follower); err != nil {
		return err
	}
	if _, err := s.GetUser(ctx, followee); err != nil {
		return err
	}
	sql := `INSERT INTO {s}.follows (follower_id, followee_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`
	if !on {
		sql = `DELETE FROM {s}.follows WHERE follower_id = $1 AND followee_id = $2`
	}
	shards := []int{shardmap.ShardOf(follower)}
	if fs := shardmap.ShardOf(followee); fs != shards[0] {
		shards = append(shards, fs)
	}
	for _, shard := range shards {
		err := s.do(ctx, shard, func(ctx context.Context, db *pgxpool.Pool) error {
			_, err := db.Exec(ctx, sq(shard, sql), follower, followee)
			return err
		})
		if err != nil {
			return fmt.Errorf("follow %d->%d (on=%v) in shard %d: %w", follower, followee, on, shard, err)
		}
	}
	return nil
}

// Following lists whom id follows, from id's shard.
func (s *Store) Following(ctx context.Context, id int64) ([]int64, error) {
	return s.ids(ctx, id, `SELECT followee_id FROM {s}.follows WHERE follower_id = $1 ORDER BY followee_id`)
}

// Followers lists who follows id, from id's shard.
func (s *Store) Followers(ctx context.Context, id int64) ([]int64, error) {
	return s.ids(ctx, id, `SELECT follower_id FROM {s}.follows WHERE followee_id = $1 ORDER BY follower_id`)
}

// ids runs a one-column bigint query in the shard of key.
func (s *Store) ids(ctx context.Context, key int64, sql string) ([]int64, error) {
	shard := shardmap.ShardOf(key)
	if err := s.checkShard(shard); err != nil {
		return nil, err
	}
	var out []int64
	err := s.do(ctx, shard, func(ctx context.Context, db *pgxpool.Pool) error {
		rows, _ := db.Query(ctx, sq(shard, sql), key)
		var err error
		out, err = pgx.CollectRows(rows, pgx.RowTo[int64])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("query shard %d: %w", shard, err)
	}
	return out, nil
}

const photoCols = `id, user_id, s3_key, content_type, size, sha256, caption, like_count, comment_count, created_at`

// CreatePhoto stores photo metadata in the owner's shard; p.ID and p.CreatedAt are filled in.
func (s *Store) CreatePhoto(ctx context.Context, p *Photo) error {
	shard := shardmap.ShardOf(p.UserID)
	return s.do(ctx, shard, func(ctx context.Context, db *pgxpool.Pool) error {
		return db.QueryRow(ctx, sq(shard, `INSERT INTO {s}.photos (user_id, s3_key, content_type, size, sha256, caption)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, created_at`),
			p.UserID, p.S3Key, p.ContentType, p.Size, p.SHA256, p.Caption).Scan(&p.ID, &p.CreatedAt)
	})
}

// Photos reads photos by id, grouped into one query per shard; missing ids are left out.
func (s *Store) Photos(ctx context.Context, ids []int64) (map[int64]Photo, error) {
	byShard := map[int][]int64{}
	for _, id := range ids {
		byShard[shardmap.ShardOf(id)] = append(byShard[shardmap.ShardOf(id)], id)
	}
	out := map[int64]Photo{}
	for shard, ids := range byShard {
		if s.checkShard(shard) != nil {
			continue
		}
		err := s.do(ctx, shard, func(ctx context.Context, db *pgxpool.Pool) error {
			rows, _ := db.Query(ctx, sq(shard, `SELECT `+photoCols+` FROM {s}.photos WHERE id = ANY($1)`), ids)
			ps, err := pgx.CollectRows(rows, pgx.RowToStructByPos[Photo])
			for _, p := range ps {
				out[p.ID] = p
			}
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("read photos from shard %d: %w", shard, err)
		}
	}
	return out, nil
}

// UserPhotos lists owner's photos newest first, with ids below before (0: no bound).
func (s *Store) UserPhotos(ctx context.Context, owner, before int64, limit int) ([]Photo, error) {
	shard := shardmap.ShardOf(owner)
	if err := s.checkShard(shard); err != nil {
		return nil, err
	}
	if before <= 0 {
		before = 1<<63 - 1
	}
	var out []Photo
	err := s.do(ctx, shard, func(ctx context.Context, db *pgxpool.Pool) error {
		rows, _ := db.Query(ctx, sq(shard, `SELECT `+photoCols+` FROM {s}.photos
			WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3`), owner, before, limit)
		var err error
		out, err = pgx.CollectRows(rows, pgx.RowToStructByPos[Photo])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("photos of user %d: %w", owner, err)
	}
	return out, nil
}

// Like records user liking photo (idempotent) and returns the photo's like count.
func (s *Store) Like(ctx context.Context, photo, user int64) (int, error) {
	shard := shardmap.ShardOf(photo)
	if err := s.checkShard(shard); err != nil {
		return 0, err
	}
	var n int
	err := s.do(ctx, shard, func(ctx context.Context, db *pgxpool.Pool) error {
		return db.QueryRow(ctx, sq(shard, `WITH p AS (SELECT id FROM {s}.photos WHERE id = $1),
			ins AS (INSERT INTO {s}.likes (photo_id, user_id) SELECT id, $2 FROM p ON CONFLICT DO NOTHING RETURNING 1)
			UPDATE {s}.photos SET like_count = like_count + (SELECT count(*) FROM ins)
			WHERE id = $1 RETURNING like_count`), photo, user).Scan(&n)
	})
	return n, notFound(err, "like photo %d", photo)
}

// Likers lists the users who liked photo.
func (s *Store) Likers(ctx context.Context, photo int64) ([]int64, error) {
	return s.ids(ctx, photo, `SELECT user_id FROM {s}.likes WHERE photo_id = $1 ORDER BY user_id`)
}

// AddComment stores a comment in the photo's shard and bumps its comment count.
func (s *Store) AddComment(ctx context.Context, c *Comment) error {
	shard := shardmap.ShardOf(c.PhotoID)
	if err := s.checkShard(shard); err != nil {
		return err
	}
	err := s.do(ctx, shard, func(ctx context.Context, db *pgxpool.Pool) error {
		return db.QueryRow(ctx, sq(shard, `WITH p AS (SELECT id FROM {s}.photos WHERE id = $1),
			ins AS (INSERT INTO {s}.comments (photo_id, user_id, body) SELECT id, $2, $3 FROM p RETURNING id, created_at),
			upd AS (UPDATE {s}.photos SET comment_count = comment_count + 1 WHERE id = $1 AND EXISTS (SELECT 1 FROM ins))
			SELECT id, created_at FROM ins`), c.PhotoID, c.UserID, c.Body).Scan(&c.ID, &c.CreatedAt)
	})
	return notFound(err, "comment on photo %d", c.PhotoID)
}

// Comments lists the comments on photo, oldest first.
func (s *Store) Comments(ctx context.Context, photo int64) ([]Comment, error) {
	shard := shardmap.ShardOf(photo)
	if err := s.checkShard(shard); err != nil {
		return nil, err
	}
	var out []Comment
	err := s.do(ctx, shard, func(ctx context.Context, db *pgxpool.Pool) error {
		rows, _ := db.Query(ctx, sq(shard, `SELECT id, photo_id, user_id, body, created_at FROM {s}.comments
			WHERE photo_id = $1 ORDER BY id`), photo)
		var err error
		out, err = pgx.CollectRows(rows, pgx.RowToStructByPos[Comment])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("comments of photo %d: %w", photo, err)
	}
	return out, nil
}
