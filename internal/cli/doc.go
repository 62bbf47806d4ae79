// Package cli is instactl's command tree: cobra commands that parse flags, build dependencies
// through a Factory, call the library packages, and render their results as text or JSON.
// Exit codes are decided here and nowhere else.
package cli
