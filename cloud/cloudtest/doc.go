// Package cloudtest is the conformance suite every cloud.Provider must pass (cloud/aws against
// moto, cloud/sandbox on the local machine), and Fake, an in-memory provider with injectable
// delays and failures for unit tests of code that drives a provider.
package cloudtest
