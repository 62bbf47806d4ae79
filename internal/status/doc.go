// Package status collects one picture of a whole stack — hosts per role with their health and
// services, the release each app host runs — from the provider's inventory and one SSH command
// per host. It returns a Report value; the CLI renders it.
package status
