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
	"slices"
	"sync"
	"time"
)

// Problem is one acknowledged write that did not read back.
type Problem struct {
	Record Record `json:"record"`
	// Reason says what was wrong ("missing", "sha256 mismatch ...", or the read error).
	Reason string `json:"reason"`
}

// VerifyResult counts the outcome of reading back every recorded write.
type VerifyResult struct {
	Checked    int `json:"checked"`
	OK         int `json:"ok"`
	Missing    int `json:"missing"`
	Mismatched int `json:"mismatched"`
	// Errors are records that could not be checked (server errors, timeouts).
	Errors int `json:"errors"`
	// Problems lists up to 100 failures.
	Problems []Problem `json:"problems,omitempty"`
}

// Clean reports whether every record read back intact.
func (v VerifyResult) Clean() bool { return v.Checked == v.OK }

var errMissing = errors.New("missing")

type mismatch struct{ what string }

// Error describes the mismatch.
func (m mismatch) Error() string { return m.what }

// Verify reads every record of recordFile back through the API at baseURL (8 at a time) and
// reports missing and mismatched writes. A malformed record file is an error; failed reads are
// counted in the result.
func Verify(ctx context.Context, baseURL, recordFile string) (VerifyResult, error) {
	f, err := os.Open(recordFile)
	if err != nil {
		return VerifyResult{}, fmt.Errorf("verify: %w", err)
	}
	defer f.Close()
	var recs []Record
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return VerifyResult{}, fmt.Errorf("verify: %s:%d: %w", recordFile, n, err)
		}
		recs = append(recs, r)
	}
	if err := sc.Err(); err != nil {
		return VerifyResult{}, fmt.Errorf("verify: read %s: %w", recordFile, err)
	}
	client := &http.Client{Timeout: 10 * time.Second}
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
			err := check(ctx, client, baseURL, rec)
			mu.Lock()
			defer mu.Unlock()
			res.Checked++
			var mm mismatch
			switch {
			case err == nil:
				res.OK++
				return
			case errors.Is(err, errMissing):
				res.Missing++
			case errors.As(err, &mm):
				res.Mismatched++
			default:
				res.Errors++
			}
			if len(res.Problems) < 100 {
				res.Problems = append(res.Problems, Problem{Record: rec, Reason: err.Error()})
			}
		})
	}
	wg.Wait()
	return res, ctx.Err()
}

// get fetches path into out; 404 is errMissing.
func get(ctx context.Context, c *http.Client, base, path string, out any) error {
	err := call(ctx, c, base, "GET", path, "", nil, http.StatusOK, out)
	var se *StatusError
	if errors.As(err, &se) && se.Code == http.StatusNotFound {
		return fmt.Errorf("%s: %w", path, errMissing)
	}
	return err
}

func check(ctx context.Context, c *http.Client, base string, r Record) error {
	switch r.Kind {
	case "user":
		var u struct{ Username string }
		if err := get(ctx, c, base, fmt.Sprintf("/users/%d", r.ID), &u); err != nil {
			return err
		}
		if digest([]byte(u.Username)) != r.SHA256 {
			return mismatch{fmt.Sprintf("user %d: username %q does not match the recorded sha256", r.ID, u.Username)}
		}
	case "follow":
		var f struct{ Following []int64 }
		if err := get(ctx, c, base, fmt.Sprintf("/users/%d/following", r.ID), &f); err != nil {
			return err
		}
		if !slices.Contains(f.Following, r.Ref) {
			return fmt.Errorf("follow %d->%d: %w", r.ID, r.Ref, errMissing)
		}
	case "photo":
		var p struct {
			UserID int64 `json:"user_id"`
			SHA256 string
		}
		if err := get(ctx, c, base, fmt.Sprintf("/photos/%d", r.ID), &p); err != nil {
			return err
		}
		if p.UserID != r.Ref || p.SHA256 != r.SHA256 {
			return mismatch{fmt.Sprintf("photo %d: owner %d sha256 %s, recorded %d %s", r.ID, p.UserID, p.SHA256, r.Ref, r.SHA256)}
		}
		return checkImage(ctx, c, base, r)
	case "like":
		var l struct {
			UserIDs []int64 `json:"user_ids"`
		}
		if err := get(ctx, c, base, fmt.Sprintf("/photos/%d/likes", r.ID), &l); err != nil {
			return err
		}
		if !slices.Contains(l.UserIDs, r.Ref) {
			return fmt.Errorf("like of %d by %d: %w", r.ID, r.Ref, errMissing)
		}
	case "comment":
		var cs struct {
			Comments []struct {
				ID   int64
				Body string
			}
		}
		if err := get(ctx, c, base, fmt.Sprintf("/photos/%d/comments", r.Ref), &cs); err != nil {
			return err
		}
		for _, cm := range cs.Comments {
			if cm.ID == r.ID {
				if digest([]byte(cm.Body)) != r.SHA256 {
					return mismatch{fmt.Sprintf("comment %d: body does not match the recorded sha256", r.ID)}
				}
				return nil
			}
		}
		return fmt.Errorf("comment %d on photo %d: %w", r.ID, r.Ref, errMissing)
	default:
		return fmt.Errorf("unknown record kind %q", r.Kind)
	}
	return nil
}

// checkImage downloads the photo bytes (from S3 through the app) and compares the digest.
func checkImage(ctx context.Context, c *http.Client, base string, r Record) error {
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("%s/photos/%d/image", base, r.ID), nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
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
