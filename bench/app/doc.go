// Package appbench holds the app server's throughput and latency benchmarks (app_test.go): the
// app in-process over two real PostgreSQL nodes, Redis, memcached and moto S3, driven closed-loop
// for feed reads and uploads and open-loop by the load generator. See README.md and run.sh.
package appbench
