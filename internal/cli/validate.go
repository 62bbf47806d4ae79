package cli

import (
	"errors"
	"fmt"
	"io"

	"github.com/instactl/instactl/stack"
	"github.com/spf13/cobra"
)

// ValidateResult is what `instactl validate` reports.
type ValidateResult struct {
	File   string         `json:"file"`
	Valid  bool           `json:"valid"`
	Errors []*stack.Error `json:"errors,omitempty"`
	Hosts  int            `json:"hosts,omitempty"`
	Roles  []string       `json:"roles,omitempty"`
}

// NewCmdValidate checks a stack file and reports every problem at once.
func NewCmdValidate(f *Factory, out func() Output) *cobra.Command {
	return &cobra.Command{
		Use:   "validate",
		Short: "Check a stack file and report every problem at once",
		Long: `Parse and check the stack file. Every problem is reported with file:line:column, the key
path, what was expected and what was found. With provider: aws the files it names must exist
too (ssh.key's public half). Exits 2 when the file is invalid.`,
		Example: `  instactl validate
  instactl validate --stack prod.yaml -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, err := validateRun(f)
			if err != nil {
				return err
			}
			if rerr := render(f.IO, out(), res, func(w io.Writer) error {
				if res.Valid {
					_, err := fmt.Fprintf(w, "%s is valid: %d hosts in roles %v\n", res.File, res.Hosts, res.Roles)
					return err
				}
				for _, e := range res.Errors {
					fmt.Fprintln(w, e.Error())
				}
				return nil
			}); rerr != nil {
				return rerr
			}
			if !res.Valid {
				return silentExit{ExitUsage}
			}
			return nil
		},
	}
}

func validateRun(f *Factory) (*ValidateResult, error) {
	res := &ValidateResult{File: f.StackPath()}
	st, err := f.Stack()
	var errs stack.Errors
	switch {
	case errors.As(err, &errs):
		res.Errors = errs
		return res, nil
	case err != nil:
		return nil, withCode(ExitUsage, err)
	}
	// The files the stack names must exist too: plan would fail on a missing key.
	if err := st.CheckFiles(); errors.As(err, &errs) {
		res.Errors = errs
		return res, nil
	}
	res.Valid = true
	res.Hosts = len(st.Hosts())
	for _, r := range st.Roles {
		res.Roles = append(res.Roles, r.Name)
	}
	return res, nil
}
