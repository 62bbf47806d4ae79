package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/bradfitz/gomemcache/memcache"
)

// Blobs stores photo bytes in S3. The endpoint, region and credentials come from the standard
// AWS configuration (AWS_ENDPOINT_URL for moto or another S3); addressing is path-style.
type Blobs struct {
	s3     *s3.Client
	bucket string
}

// NewBlobs builds the S3 client from the default AWS configuration.
func NewBlobs(ctx context.Context, bucket string) (*Blobs, error) {
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("aws config: %w", err)
	}
	c := s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.UsePathStyle = true
		o.DisableLogOutputChecksumValidationSkipped = true // moto and many S3s send none
	})
	return &Blobs{s3: c, bucket: bucket}, nil
}

// Put uploads body under key.
func (b *Blobs) Put(ctx context.Context, key, contentType string, body []byte) error {
	_, err := b.s3.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(b.bucket), Key: aws.String(key), Body: bytes.NewReader(body),
		ContentType: aws.String(contentType), ContentLength: aws.Int64(int64(len(body))),
	})
	if err != nil {
		return fmt.Errorf("s3 put %s/%s: %w", b.bucket, key, err)
	}
	return nil
}

// Get opens the object under key; the caller closes it.
func (b *Blobs) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	out, err := b.s3.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(b.bucket), Key: aws.String(key)})
	if err != nil {
		return nil, fmt.Errorf("s3 get %s/%s: %w", b.bucket, key, err)
	}
	return out.Body, nil
}

// PhotoCache caches photo metadata in memcached as JSON under "photo:<id>".
type PhotoCache struct{ mc *memcache.Client }

func photoKey(id int64) string { return "photo:" + strconv.FormatInt(id, 10) }

// GetMulti returns the cached photos among ids (one multi-get round trip per server).
func (c PhotoCache) GetMulti(ids []int64) (map[int64]Photo, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = photoKey(id)
	}
	items, err := c.mc.GetMulti(keys)
	if err != nil {
		return nil, fmt.Errorf("memcached get: %w", err)
	}
	out := make(map[int64]Photo, len(items))
	for _, it := range items {
		var p Photo
		if json.Unmarshal(it.Value, &p) == nil {
			out[p.ID] = p
		}
	}
	return out, nil
}

// Set caches p for five minutes.
func (c PhotoCache) Set(p Photo) error {
	b, _ := json.Marshal(p)
	if err := c.mc.Set(&memcache.Item{Key: photoKey(p.ID), Value: b, Expiration: 300}); err != nil {
		return fmt.Errorf("memcached set: %w", err)
	}
	return nil
}

// Delete drops a cached photo after its counters changed.
func (c PhotoCache) Delete(id int64) error {
	if err := c.mc.Delete(photoKey(id)); err != nil && !errors.Is(err, memcache.ErrCacheMiss) {
		return fmt.Errorf("memcached delete: %w", err)
	}
	return nil
}

// photos returns photos by id in the order of ids, from memcached, falling back to Postgres
// for misses (and when memcached is down), then filling the cache.
func (a *App) photos(ctx context.Context, ids []int64) ([]Photo, error) {
	found, err := a.cache.GetMulti(ids)
	if err != nil {
		a.log.Warn("photo cache", "err", err)
		found = map[int64]Photo{}
	}
	var miss []int64
	for _, id := range ids {
		if _, ok := found[id]; !ok {
			miss = append(miss, id)
		}
	}
	a.metrics.cacheHits.Add(float64(len(ids) - len(miss)))
	a.metrics.cacheMisses.Add(float64(len(miss)))
	if len(miss) > 0 {
		fromDB, err := a.store.Photos(ctx, miss)
		if err != nil {
			return nil, err
		}
		for id, p := range fromDB {
			found[id] = p
			_ = a.cache.Set(p)
		}
	}
	out := make([]Photo, 0, len(ids))
	for _, id := range ids {
		if p, ok := found[id]; ok {
			p.URL = PhotoURL(a.cfg.PhotoBaseURL, p.S3Key)
			out = append(out, p)
		}
	}
	return out, nil
}
