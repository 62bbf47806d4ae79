package sandboxctl

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
)

// Moto is the sandbox's local AWS API: one moto_server process on 127.0.0.1:Port whose pid is
// kept under Dir, so a later `sandbox down` (another process) can stop exactly it.
type Moto struct {
	Dir  string
	Port int
}

// Endpoint is the URL the AWS SDK is pointed at.
func (m Moto) Endpoint() string { return "http://127.0.0.1:" + strconv.Itoa(m.Port) }

func (m Moto) pidFile() string { return filepath.Join(m.Dir, "moto.pid") }

// pid returns the recorded pid if that process is still our moto_server.
func (m Moto) pid() int {
	b, err := os.ReadFile(m.pidFile())
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil || !strings.Contains(string(cmd), "moto_server") || !strings.Contains(string(cmd), strconv.Itoa(m.Port)) {
		return 0
	}
	return pid
}

// Start runs moto_server unless it is already running, and waits until it answers.
func (m Moto) Start(ctx context.Context) error {
	if m.pid() != 0 {
		return m.wait(ctx)
	}
	bin, err := exec.LookPath("moto_server")
	if err != nil {
		return fmt.Errorf("moto_server not found: install moto with its server (pip install 'moto[server]'), it serves S3 to the sandbox")
	}
	if err := os.MkdirAll(m.Dir, 0o700); err != nil {
		return fmt.Errorf("moto directory: %w", err)
	}
	if c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(m.Port)), 300*time.Millisecond); err == nil {
		c.Close()
		return fmt.Errorf("port %d is taken by another process; set sandbox.moto_port to a free port", m.Port)
	}
	log, err := os.OpenFile(filepath.Join(m.Dir, "moto.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("moto log: %w", err)
	}
	defer log.Close()
	cmd := exec.Command(bin, "-H", "127.0.0.1", "-p", strconv.Itoa(m.Port))
	cmd.Stdout, cmd.Stderr = log, log
	cmd.Env = append(os.Environ(), "AWS_EC2_METADATA_DISABLED=true")
	// Its own session: moto outlives this instactl process, like the sandbox hosts do.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start moto_server: %w", err)
	}
	go func() { _ = cmd.Wait() }()
	if err := os.WriteFile(m.pidFile(), []byte(strconv.Itoa(cmd.Process.Pid)), 0o600); err != nil {
		return fmt.Errorf("record moto pid: %w", err)
	}
	return m.wait(ctx)
}

func (m Moto) wait(ctx context.Context) error {
	deadline := time.Now().Add(60 * time.Second)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(m.Port))
	for {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("moto_server did not answer on %s within 60s (log: %s)", addr, filepath.Join(m.Dir, "moto.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop ends the recorded moto_server, if running.
func (m Moto) Stop() error {
	pid := m.pid()
	if pid == 0 {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 50 && m.pid() != 0; i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if m.pid() != 0 {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	return os.Remove(m.pidFile())
}

// S3 returns an S3 client for the local moto.
func (m Moto) S3(region string) *s3.Client {
	cfg := aws.Config{Region: region, Credentials: credentials.NewStaticCredentialsProvider("sandbox", "sandbox", "")}
	return s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.BaseEndpoint = aws.String(m.Endpoint())
		o.UsePathStyle = true
	})
}

// EnsureBucket creates bucket unless it exists.
func (m Moto) EnsureBucket(ctx context.Context, region, bucket string) error {
	c := m.S3(region)
	if _, err := c.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(bucket)}); err == nil {
		return nil
	}
	_, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	var ae smithy.APIError
	if errors.As(err, &ae) && (ae.ErrorCode() == "BucketAlreadyOwnedByYou" || ae.ErrorCode() == "BucketAlreadyExists") {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create bucket %s: %w", bucket, err)
	}
	return nil
}
