// Package archtest holds one test: the package table of docs/architecture.md matches the
// imports of the code, and every arrow in it points down a layer. It has no code of its own.
package archtest
