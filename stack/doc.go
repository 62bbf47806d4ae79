// Package stack reads, defaults and validates the stack file: the one declarative YAML document
// that says what instactl provisions, deploys, backs up and shards. Errors carry file:line:column.
package stack
