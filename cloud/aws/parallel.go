package aws

import "sync"

// inParallel runs fs at once and returns the first error in argument order: the reads of one
// bucket or role do not depend on each other, and in a row they set how long a no-op plan takes.
// Each f writes only its own fields.
func inParallel(fs ...func() error) error {
	errs := make([]error, len(fs))
	var wg sync.WaitGroup
	for i, f := range fs {
		wg.Go(func() { errs[i] = f() })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
