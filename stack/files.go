package stack

import (
	"errors"
	"io/fs"
	"os"
)

// CheckFiles reports the files on this machine that an AWS stack names and instactl needs before
// it can touch a host: the public half of ssh.key, which plan and apply import as the stack's key
// pair. Each problem points at the key that names the file and says how to create it. The sandbox
// generates its own key, so a sandbox stack has nothing to check. It returns nil or Errors.
func (s *Stack) CheckFiles() error {
	if s.Provider != "aws" || s.SSH.Key == "" {
		return nil
	}
	var errs Errors
	pub := s.SSH.Key + ".pub"
	_, err := os.Stat(pub)
	switch {
	case err == nil:
	case errors.Is(err, fs.ErrNotExist):
		fix := "create it with: ssh-keygen -t ed25519 -f " + s.SSH.Key
		if _, perr := os.Stat(s.SSH.Key); perr == nil {
			fix = "write it from the private key with: ssh-keygen -y -f " + s.SSH.Key + " > " + pub
		}
		errs = append(errs, s.errorAt("ssh.key", pub+" does not exist; "+fix))
	default:
		errs = append(errs, s.errorAt("ssh.key", "cannot read the public key: "+err.Error()))
	}
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// errorAt is an Error about keyPath, placed where it (or its nearest written parent) is.
func (s *Stack) errorAt(keyPath, msg string) *Error {
	return &Error{File: s.Path, Pos: locate(s.pos, keyPath), Path: keyPath, Msg: msg}
}
