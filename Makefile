# tabby — build, test and demo entry points. `make help` lists them.
SHELL    := /bin/bash
GO       ?= go
PKG      := github.com/tabbynet/tabby
BINARIES := tabby tabby-ipam tabby-node tabbyctl
VERSION  ?= $(shell git describe --tags --dirty 2>/dev/null || echo v0.0.0-dev)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null)
LDFLAGS  := -s -w -X $(PKG)/buildinfo.Version=$(VERSION) -X $(PKG)/buildinfo.Commit=$(COMMIT)
# -count=1: these tests talk to a kernel and servers, never trust a cached pass.
GOTEST   ?= $(GO) test -count=1
TEST_TIMEOUT ?= 30m

.PHONY: help build deps test test-unit test-netns test-vm test-cluster bench demo lint clean vm-prepare k8s-prepare

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## static binaries (CGO off) into bin/
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ $(addprefix ./cmd/,$(BINARIES))

deps: ## install the system packages the tests and demo need (root)
	hack/deps.sh

test: deps lint vm-prepare k8s-prepare ## everything this machine can run: unit, netns and VM tiers
	$(GOTEST) -timeout $(TEST_TIMEOUT) ./...

test-unit: ## pure tests only: no root, no namespaces, no VM
	$(GOTEST) -short ./...

test-netns: deps ## unit + netns tiers on the host kernel (root); VM tests skip
	TABBY_VM=off $(GOTEST) -timeout $(TEST_TIMEOUT) -skip '^TestVM' ./...

test-vm: deps vm-prepare ## the VM tier: tests that need IPIP and other features this kernel lacks
	$(GOTEST) -timeout $(TEST_TIMEOUT) -run '^TestVM' ./...

test-cluster: deps k8s-prepare ## tabby's DaemonSet from deploy/tabby.yaml on real kubelet/containerd nodes
	$(GOTEST) -timeout $(TEST_TIMEOUT) -v -run '^TestCluster' ./test/clusterdeploy/

vm-prepare: ## download the Debian kernel and build the VM initramfs (cached)
	$(GO) run ./test/vmtest/cmd/tabby-vm prepare

k8s-prepare: ## build kube-apiserver & co. from source (cached; minutes the first time)
	$(GO) run ./test/k8stest/cmd/tabby-k8s prepare

bench: deps ## benchmarks; they print figures and never fail on a number
	$(GO) test -run '^$$' -bench . -benchmem -timeout $(TEST_TIMEOUT) ./...

demo: deps build ## a guided tour of what works today
	$(GO) run ./test/demo

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean: ## remove build output
	rm -rf bin
