package app

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

func TestParseArgsPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "app.env")
	os.WriteFile(file, []byte(`# written by instactl deploy
INSTAGRAM_LISTEN=127.0.0.5:80
INSTAGRAM_CONTROL_DSN="postgres://control"
INSTAGRAM_REDIS_ADDR=127.0.0.6:6379
INSTAGRAM_MEMCACHED_ADDRS=127.0.0.7:11211, 127.0.0.8:11211
INSTAGRAM_S3_BUCKET=photos
INSTAGRAM_VERSION=r42
INSTAGRAM_FENCE_WAIT=5s
export AWS_ENDPOINT_URL=http://127.0.0.9:5000
AWS_REGION=us-east-1
`), 0o644)
	env := map[string]string{"INSTAGRAM_REDIS_ADDR": "127.0.0.10:6379", "AWS_REGION": "eu-west-1"}
	opts, err := ParseArgs([]string{"-config", file, "-listen", "127.0.0.11:8080"}, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	c := opts.Config
	if c.Listen != "127.0.0.11:8080" || c.RedisAddr != "127.0.0.10:6379" || c.ControlDSN != "postgres://control" ||
		!reflect.DeepEqual(c.MemcachedAddrs, []string{"127.0.0.7:11211", "127.0.0.8:11211"}) ||
		c.Release != "r42" || c.FenceWait != 5*time.Second || c.Workers != 4 {
		t.Fatalf("config: %+v", c)
	}
	if !reflect.DeepEqual(opts.AWSEnv, map[string]string{"AWS_ENDPOINT_URL": "http://127.0.0.9:5000"}) {
		t.Fatalf("AWS env to export: %v", opts.AWSEnv)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseArgs([]string{"-config", filepath.Join(t.TempDir(), "missing.env")}, func(string) string { return "" }); err == nil {
		t.Fatal("a named, missing config file was accepted")
	}
	if _, err := ParseArgs([]string{"-workers", "x", "-config", file}, func(string) string { return "" }); err == nil {
		t.Fatal("bad -workers accepted")
	}
}
