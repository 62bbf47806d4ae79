package cloud

import "context"

// Hooks a caller puts in a context to learn what a Provider call is doing while it runs:
// provision.Apply bounds how many calls run at once, and a call that only waits for a state
// (an instance to run, a volume to attach) should not hold a slot; a volume can be made as
// soon as its instance has an id and a zone, long before the instance runs.

type waitingKey struct{}
type createdKey struct{}

// WithWaiting returns ctx carrying f: a Provider call about to wait for a state calls f, and the
// function f returns once the wait is over (Waiting).
func WithWaiting(ctx context.Context, f func() (resume func())) context.Context {
	return context.WithValue(ctx, waitingKey{}, f)
}

// Waiting tells ctx's WithWaiting hook that the caller now waits (polls) instead of calling; the
// caller calls the returned function when the wait is over. Without a hook it does nothing.
func Waiting(ctx context.Context) (resume func()) {
	if f, ok := ctx.Value(waitingKey{}).(func() func()); ok {
		return f()
	}
	return func() {}
}

// WithCreated returns ctx carrying f: CreateInstance calls it as soon as the instance has an id
// and a zone (it may still be pending), and again with a new id if the instance died pending
// and was made once more.
func WithCreated(ctx context.Context, f func(Instance)) context.Context {
	return context.WithValue(ctx, createdKey{}, f)
}

// Created tells ctx's WithCreated hook that in exists now; without a hook it does nothing.
func Created(ctx context.Context, in Instance) {
	if f, ok := ctx.Value(createdKey{}).(func(Instance)); ok {
		f(in)
	}
}
