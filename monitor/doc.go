// Package monitor generates the monitoring of a stack from its stack file and topology, and
// talks to Alertmanager.
//
// Generated (pure functions returning bytes): the Prometheus scrape configuration (one job per
// exporter, static targets per host, labels instance = host name, role, group), the alerting
// and recording rules, the Alertmanager configuration, and the postgres_exporter custom
// queries. The port plan every host follows is the exported Port* constants; the metrics other
// parts of instactl must write are the Metric* constants.
//
// Replication health is computed from sources that tell an idle primary from a broken link:
// byte lag and streaming state from pg_stat_replication on the primary (a custom query), and
// the age of a heartbeat row the primary rewrites every HeartbeatInterval, read on each
// standby. postgres_exporter's own pg_replication_lag (now() - pg_last_xact_replay_timestamp())
// is wrong for this: it grows without bound on an idle primary's standbys (postgres_exporter
// issue 385), and the usual fix (0 when receive LSN = replay LSN) hides a broken link; it is
// not used.
//
// The Alertmanager client (Client, the API interface) reads alerts and manages silences through
// API v2; SilenceDuring silences what an operation is expected to trip for exactly as long as
// it runs. PromClient queries Prometheus; RecoveryPoints reads from it, per replication group,
// the newest backup and the point a restore reaches now (for `instactl status`).
package monitor
