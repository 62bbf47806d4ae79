// Package testenv starts the real components tests run against — moto_server, PostgreSQL 15,
// Redis, memcached — as throwaway processes on loopback, and stops them when the test ends.
//
// A missing component skips the test on a developer machine and fails it in CI (CI=true), with
// the apt-get line that installs it: a CI run must never pass by skipping.
package testenv
