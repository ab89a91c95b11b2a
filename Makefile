# The two commands a newcomer needs: `make run` and `make test`.
GO       ?= go
FUZZTIME ?= 20s
BENCH    ?= .

.PHONY: run test check fmt vet tidy lint fuzz bench build

run: ## start `aisecops all` on the embedded default
	$(GO) run ./cmd/aisecops all

build:
	$(GO) build -o bin/aisecops ./cmd/aisecops

# deploy/validate checks the deployment files with Helm, Kubernetes and mesh
# packages; it is a module of its own so the product never depends on them.
# It runs no code of ours concurrently, so it skips the race detector, whose
# build of those packages would double CI's compile time.
test: ## the whole suite, with the race detector (what CI runs)
	$(GO) test -race -count=1 -timeout 20m ./...
	cd deploy/validate && $(GO) test -count=1 -timeout 10m ./...

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# go.mod and go.sum must be what `go mod tidy` would write, so a diff shows every
# dependency change the code made.
tidy:
	$(GO) mod tidy -diff
	cd deploy/validate && $(GO) mod tidy -diff

# staticcheck is a tool dependency in go.mod, so its version is pinned with the rest.
lint:
	$(GO) tool staticcheck ./...

check: fmt vet tidy lint test

# Each fuzz target runs for FUZZTIME (go test runs one -fuzz target at a time).
fuzz: ## every fuzz target, FUZZTIME each
	@for d in $$(grep -rl '^func Fuzz' --include='*_test.go' . | xargs -n1 dirname | sort -u); do \
		for f in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$d/*_test.go | cut -d' ' -f2); do \
			echo "== $$d $$f"; $(GO) test $$d -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) || exit 1; \
		done; \
	done

bench-go: ## the Go benchmarks quoted in README's performance section
	$(GO) test -run='^$$' -bench='$(BENCH)' -benchmem ./...

# The load table of the performance issue: a fresh redis-server, the no-op
# floor and `aisecops serve`, all on loopback, floor and server interleaved
# per concurrency (see cmd/aisecops-load). bench-quick is the same, shorter.
LOAD_DURATION ?= 10s
LOAD_FLAGS    ?=
SOAK_FLAGS    ?=

.PHONY: bench-go bench-quick load-build soak soak-short

load-build:
	$(GO) build -o bin/aisecops ./cmd/aisecops
	$(GO) build -o bin/aisecops-load ./cmd/aisecops-load

bench: load-build ## load table: floor vs aisecops serve on Redis, LOAD_DURATION per row
	bin/aisecops-load bench --aisecops bin/aisecops --duration $(LOAD_DURATION) $(LOAD_FLAGS)

bench-quick:
	$(MAKE) bench LOAD_DURATION=3s LOAD_FLAGS="--warmup 1s $(LOAD_FLAGS)"

# Fixed rate while Redis is SIGKILLed and restarted twice, then the audit log
# and Redis are checked for lost, double and over-budget debits.
soak: load-build ## ten minutes of load while Redis is killed twice
	bin/aisecops-load soak --aisecops bin/aisecops --duration 10m $(SOAK_FLAGS)

soak-short: load-build ## the soak in two minutes, for CI
	bin/aisecops-load soak --aisecops bin/aisecops --duration 2m --deadline 5m $(SOAK_FLAGS)
