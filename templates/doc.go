// Package templates renders what a host runs at first boot: the per-role bootstrap script
// (cloud-init user-data on AWS, run once inside the host's mount namespace by the sandbox) and
// the configuration files, systemd units and sandbox service definitions it installs.
//
// Everything is a text/template in an embedded file system, so `instactl render ROLE` shows
// exactly what a host will run, and golden files pin it down. The same script serves both
// clouds; Data.ServiceManager selects systemd units (AWS) or the small instactl-svc supervisor
// (sandbox hosts have no systemd), and Data.InstallPackages selects apt-get (AWS only).
//
// The script is idempotent: it can be re-run after a failure or on a host that already
// bootstrapped. It removes DoneFile and FailedFile when it starts and writes exactly one of them
// when it ends, so a caller waits for either file to appear.
package templates
