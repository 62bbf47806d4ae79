package stack

import _ "embed"

//go:embed example.yaml
var example []byte

// Example returns the commented example stack file `instactl init` writes: every key with its
// default, valid for the sandbox as written and for AWS after changing provider and image.
func Example() []byte { return append([]byte(nil), example...) }
