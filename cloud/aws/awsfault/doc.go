// Package awsfault is test support: a seeded fault injector for the AWS SDK's HTTP client (an
// http.RoundTripper) and a reverse proxy built on it, put in front of moto_server so that code
// under test meets what moto does not simulate and AWS does: throttling, replies lost after the
// call took effect, eventual consistency, slow states, instances that die pending, capacity and
// limit errors, and client-token idempotency. Faults come from a named Profile and a seed; moto
// behind the injector stays the oracle.
package awsfault
