package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/redis/go-redis/v9"

	"github.com/instactl/instactl/shardmap"
)

// OwnerIndex maps photo id -> owner id in Redis hashes, Instagram's memory trick: many small
// hashes encoded as listpacks cost a fraction of one string key per mapping. Instagram bucketed
// dense media ids by id/1000; our ids are sparse (milliseconds << 23), so consecutive ids rarely
// share id/1000. The bucket is therefore the id's second — (id>>23)/1000 — and the field the rest
// of the id. Keep hash-max-listpack-entries above the uploads per second (see the benchmark).
type OwnerIndex struct{ rdb *redis.Client }

const idTimeShift = 23

func ownerSlot(photo int64) (key, field string) {
	ms := photo >> idTimeShift
	bucket := ms / 1000
	rest := photo - (bucket*1000)<<idTimeShift
	return "p2o:" + strconv.FormatInt(bucket, 10), strconv.FormatInt(rest, 10)
}

// Set records that owner owns photo.
func (o OwnerIndex) Set(ctx context.Context, photo, owner int64) error {
	k, f := ownerSlot(photo)
	if err := o.rdb.HSet(ctx, k, f, owner).Err(); err != nil {
		return fmt.Errorf("owner index set %d: %w", photo, err)
	}
	return nil
}

// Get returns the owner of photo, or ErrNotFound.
func (o OwnerIndex) Get(ctx context.Context, photo int64) (int64, error) {
	k, f := ownerSlot(photo)
	v, err := o.rdb.HGet(ctx, k, f).Int64()
	if errors.Is(err, redis.Nil) {
		return 0, fmt.Errorf("owner of photo %d: %w", photo, ErrNotFound)
	}
	if err != nil {
		return 0, fmt.Errorf("owner of photo %d: %w", photo, err)
	}
	return v, nil
}

// Feeds are the per-user home feed lists: capped Redis lists of photo ids, newest pushed left.
type Feeds struct {
	rdb    *redis.Client
	length int
}

func feedKey(user int64) string { return "feed:" + strconv.FormatInt(user, 10) }

// Push adds photo to the feeds of users.
func (f Feeds) Push(ctx context.Context, photo int64, users []int64) error {
	for chunk := range slices.Chunk(users, 500) {
		_, err := f.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, u := range chunk {
				p.LPush(ctx, feedKey(u), photo)
				p.LTrim(ctx, feedKey(u), 0, int64(f.length-1))
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("push photo %d to %d feeds: %w", photo, len(chunk), err)
		}
	}
	return nil
}

// Page returns up to limit photo ids from user's feed, newest first, below before (0: none).
// Ids are sorted and de-duplicated because fan-out jobs can finish out of order or run twice.
func (f Feeds) Page(ctx context.Context, user, before int64, limit int) ([]int64, error) {
	raw, err := f.rdb.LRange(ctx, feedKey(user), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("feed of %d: %w", user, err)
	}
	ids := make([]int64, 0, len(raw))
	for _, s := range raw {
		id, err := strconv.ParseInt(s, 10, 64)
		if err == nil && (before <= 0 || id < before) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	ids = slices.Compact(ids)
	slices.Reverse(ids)
	return ids[:min(limit, len(ids))], nil
}

// fanoutJob is the payload of a "fanout" job: push a new photo to its owner's followers.
type fanoutJob struct {
	PhotoID int64 `json:"photo_id"`
}

// fanout resolves the owner through the owner index (falling back to Postgres) and pushes the
// photo id into every follower's feed. Running it twice only duplicates list entries, which
// Page removes.
func (a *App) fanout(ctx context.Context, job Job) error {
	var j fanoutJob
	if err := json.Unmarshal(job.Payload, &j); err != nil {
		return fmt.Errorf("fanout payload: %w", err)
	}
	owner, err := a.owners.Get(ctx, j.PhotoID)
	if errors.Is(err, ErrNotFound) {
		ps, perr := a.store.Photos(ctx, []int64{j.PhotoID})
		if perr != nil {
			return perr
		}
		p, ok := ps[j.PhotoID]
		if !ok {
			return fmt.Errorf("fanout: photo %d (shard %d): %w", j.PhotoID, shardmap.ShardOf(j.PhotoID), ErrNotFound)
		}
		owner, err = p.UserID, nil
	}
	if err != nil {
		return err
	}
	followers, err := a.store.Followers(ctx, owner)
	if err != nil {
		return err
	}
	if parked, err := a.fanoutDeferred(ctx, job, len(followers)); parked || err != nil {
		return err
	}
	if err := a.feeds.Push(ctx, j.PhotoID, followers); err != nil {
		return err
	}
	a.metrics.fanouts.Add(float64(len(followers)))
	return nil
}
