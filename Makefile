# The two commands a fresh machine needs (see README.md):
#   make demo   runs the main job on the local sandbox
#   make test   runs every test (what CI runs)
SHELL := /bin/bash
GO ?= go
STATICCHECK_VERSION := v0.8.2
GOBIN := $(shell $(GO) env GOPATH)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X github.com/instactl/instactl/internal/cli.version=$(VERSION) -X github.com/instactl/instactl/internal/cli.commit=$(COMMIT)
STACK ?= examples/sandbox.yaml

.PHONY: build deps lint test test-short soak demo demo-down fuzz bench

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/instactl ./cmd/instactl

deps:
	./scripts/install-deps.sh

lint:
	@test -x $(GOBIN)/staticcheck || $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...

# Every test, against the real components (moto_server, sshd, PostgreSQL 15, Redis, memcached,
# nginx, loop-mounted XFS). With CI=true a missing component fails instead of skipping.
test: deps lint
	$(GO) test -count=1 -p 2 -timeout 25m ./...

# The suite N times in a row with one core kept busy (scripts/soak-test.sh): no test may lie under load.
N ?= 3
soak:
	./scripts/soak-test.sh $(N)

test-short: lint
	$(GO) test -short ./...

demo: deps build
	./bin/instactl --stack $(STACK) demo

demo-down: build
	./bin/instactl --stack $(STACK) sandbox down

fuzz:
	$(GO) test ./stack -run '^$$' -fuzz FuzzParse -fuzztime 60s

bench:
	$(GO) test -run '^$$' -bench . -benchtime 1x ./...
