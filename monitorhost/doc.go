// Package monitorhost brings the monitor host up and reads it back: it installs the Prometheus
// and Alertmanager configuration generated from the stack file on the monitor role's host over
// SSH (checked there with promtool and amtool before it replaces anything), starts or reloads
// both, and reads Prometheus' HTTP API (targets, rule groups, alerts) through the same SSH
// connection, so it works the same on the sandbox and on AWS, where the monitor host's address
// is private.
package monitorhost
