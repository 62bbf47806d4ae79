// Package sandboxctl brings a whole stack up on this machine and takes it down again: the local
// AWS API (moto_server, for S3), the hosts, volumes and load balancer through the sandbox
// provider and the same provisioning plan AWS gets, then waits for every host's bootstrap.
package sandboxctl
