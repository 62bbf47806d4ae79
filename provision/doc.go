// Package provision reconciles a stack file with a cloud. Desired turns the stack into the
// resources it asks for; Compute diffs them with what the provider holds (tags are the only
// state) into a Plan, a value that can be rendered, saved as JSON and applied later; Apply
// executes a plan in dependency order, in parallel where it can, and refuses a saved plan when
// the world changed since it was computed. Destroy plans the removal of everything a stack owns,
// and Inventory lists a stack's hosts for deploys, backups and shard moves.
package provision
