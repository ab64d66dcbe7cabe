# localds build, test, demo and benchmarks. Every target that needs system
# packages installs them itself (scripts/install-deps.sh, root).
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
BIN := $(CURDIR)/bin
# containerd and ctr are built from the containerd module version pinned in
# go.mod, so integration tests run the daemon we link against.
CONTAINERD_VERSION = $(shell $(GO) list -m -f '{{.Version}}' github.com/containerd/containerd/v2)
CONTAINERD_DIR = $(shell $(GO) mod download -json github.com/containerd/containerd/v2 | sed -n 's/^\t"Dir": "\(.*\)",$$/\1/p')
CMDS := localds containerd-localds-grpc
GOTEST_FLAGS ?= -count=1 -timeout 25m

.PHONY: all build containerd deps test unit demo bench fuzz lint notice clean conformance chaos

all: build

deps:
	./scripts/install-deps.sh

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ $(addprefix ./cmd/,$(CMDS))

containerd: $(BIN)/containerd

$(BIN)/containerd: go.mod
	@mkdir -p $(BIN)
	@echo "building containerd $(CONTAINERD_VERSION) and ctr from the pinned module"
	cd $(CONTAINERD_DIR) && GOFLAGS=-buildvcs=false $(GO) build \
		-ldflags "-X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION)" \
		-o $(BIN)/ ./cmd/containerd ./cmd/ctr ./cmd/containerd-shim-runc-v2
	@touch $@

# The whole suite: unit tests everywhere, integration tests (root, network
# namespaces, real avahi-daemon) where the machine allows them.
test: deps lint build containerd conformance
	LOCALDS_BIN_DIR=$(BIN) $(GO) test $(GOTEST_FLAGS) ./...

# The OCI distribution conformance suite (the version pinned as a tool in
# go.mod) from a test namespace against `localds serve`, sha256 and sha512
# runs, failing on any failure; Debian's docker-registry's figures are
# printed beside them as a baseline. Takes well under a minute.
conformance:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/localds
	$(GO) build -o $(BIN)/oci-conformance github.com/opencontainers/distribution-spec/conformance
	LOCALDS_BIN_DIR=$(BIN) $(GO) test -count=1 -timeout 10m -v -run '^TestConformance' ./internal/dsserver/

# Faults against the real parts (kill -9 of the daemon and of localds
# pull, containerd restarted, datastore outages, a full disk, bit flips in
# the CAS and the datastore), one table of what was measured; make test
# runs a short version of the same suite.
chaos: deps build containerd
	LOCALDS_CHAOS=full LOCALDS_BIN_DIR=$(BIN) $(GO) test -count=1 -timeout 20m -v -run '^TestChaos$$' ./e2e/

# Unit tests only: -short skips everything that needs root or namespaces.
unit:
	$(GO) test -short -count=1 ./...

demo: deps build containerd
	$(GO) build -o $(BIN)/ ./internal/cmd/demo-image
	./scripts/demo.sh

# Both sides of each comparison are measured in one run and printed with
# their ratio (see each benchmark's comment for what it compares).
bench: deps build
	LOCALDS_BIN_DIR=$(BIN) $(GO) test -run '^$$' -bench 'ResolveLatency' -benchtime 300x ./resolver/
	$(GO) test -run '^$$' -bench 'ResolveCached' -benchmem ./resolver/
	LOCALDS_BIN_DIR=$(BIN) $(GO) test -run '^$$' -bench 'BlobServe' -benchtime 5x ./internal/dsserver/
	LOCALDS_BIN_DIR=$(BIN) $(GO) test -run '^$$' -bench '^Benchmark(Pull|LocaldsPullArchive)$$' -benchtime 3x ./e2e/
	LOCALDS_BIN_DIR=$(BIN) $(GO) test -run '^$$' -bench 'PullShapes' -benchtime 3x -timeout 30m ./e2e/
	LOCALDS_BIN_DIR=$(BIN) $(GO) test -run '^$$' -bench 'Download' -benchtime 5x ./internal/dsclient/
	$(GO) test -run '^$$' -bench 'VolumeCreate|Unpack' -benchtime 5x ./internal/snapshot/

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseAnswer -fuzztime 60s ./internal/mdns/
	$(GO) test -run '^$$' -fuzz FuzzCanonicalHost -fuzztime 30s ./internal/mdns/
	$(GO) test -run '^$$' -fuzz FuzzZoneHandle -fuzztime 60s ./internal/dsserver/
	$(GO) test -run '^$$' -fuzz FuzzJudgeProbe -fuzztime 60s ./internal/mdns/
	$(GO) test -run '^$$' -fuzz FuzzConflictWindow -fuzztime 60s ./internal/mdns/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

notice:
	./scripts/notice.sh > NOTICE

clean:
	rm -rf $(BIN)
