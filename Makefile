# Palisade developer entry points. `make test` is what CI runs.
CARGO ?= cargo

KUBERNETES_VALIDATE_VERSION := 1.34.1

.PHONY: test unit lint fmt validate chart scan build image e2e bench-e2e bench-compare bench-compare-build bench-scale bench-gateway demo demo-down cluster-build cluster-up cluster-down generate crds manifests golden render bench fuzz

## test: formatting, lints, unit/property/golden/CLI tests, CRD validation, the chart and its
## generated manifests, security scans, and the e2e suite against a local control plane (built
## from the Go module proxy on first use) with the operator installed by the Helm chart; and that
## bench-compare (with the agent-sandbox controller it compares against) builds
test: lint unit validate chart scan e2e bench-compare-build

## build: the release binary, as the container image builds it (Dockerfile)
build:
	$(CARGO) build --release --locked -p palisade --bin palisade

## image: the container image (needs Docker or a compatible builder; IMAGE=repository:tag)
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' controller/Cargo.toml | head -n 1)
image:
	docker build -t $(or $(IMAGE),palisade:$(VERSION)) --build-arg VERSION=$(VERSION) \
	  --build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) .

unit:
	$(CARGO) test -p palisade --all-targets

## e2e: the end-to-end suite (E2E_KUBECONFIG=path to use an existing cluster instead)
e2e:
	e2e/run.sh

## bench-e2e: throughput, created->Ready latency and peak RSS of the release operator against
## the cluster in KUBECONFIG (COUNT=500 on simulated nodes, then 20 under gVisor and 20 under runc
## when the e2e real node is there), e.g. after make cluster-up: KUBECONFIG=target/e2e/kubeconfig
## Then claim mode: a pool of 300 warm sandboxes, a 300-claim burst and 45 claims/s for 60 s,
## each timed from its create to its own watch (CLAIMS=0 skips it).
bench-e2e: build
	PALISADE_BIN=$(CURDIR)/target/release/palisade $(CARGO) run -q -p palisade-e2e --bin bench-e2e -- --count $(or $(COUNT),500)
	if [ "$(CLAIMS)" != 0 ]; then PALISADE_BIN=$(CURDIR)/target/release/palisade $(CARGO) run -q -p palisade-e2e --bin bench-e2e -- --claims; fi

## bench-compare-build: what bench-compare runs, without running it: agent-sandbox v0.5.6's
## controller and CRDs (e2e/compare/build.sh: Go module proxy, cached under ~/.cache/palisade)
## and the bench-compare binary
bench-compare-build:
	e2e/compare/build.sh
	$(CARGO) build -q -p palisade-e2e --bin bench-compare

## bench-compare: Palisade beside kubernetes-sigs/agent-sandbox v0.5.6 on the local control plane
## (simulated nodes; brought up with PALISADE_E2E_NODE=0 when neither KUBECONFIG nor a running
## cluster is there, and left up: make cluster-down). Cold sandboxes (COUNTS=100,500,2000) as a
## burst and at RATE/s (45), warm claims, bare-client ceilings, REPEATS (3) alternated runs;
## target/bench/compare.{md,json,png}. More flags: BENCH_COMPARE_ARGS (docs/performance.md).
BENCH_VENV := $(HOME)/.cache/palisade/venv-bench
COUNTS ?= 100,500,2000
bench-compare: build bench-compare-build
	if [ -z "$$KUBECONFIG" ] && [ ! -s target/e2e/kubeconfig ]; then PALISADE_E2E_NODE=0 e2e/cluster/up.sh; fi
	KUBECONFIG=$${KUBECONFIG:-$(CURDIR)/target/e2e/kubeconfig} PALISADE_BIN=$(CURDIR)/target/release/palisade \
	  $(CARGO) run -q --release -p palisade-e2e --bin bench-compare -- --counts $(COUNTS) \
	  --rate $(or $(RATE),45) --repeats $(or $(REPEATS),3) $(BENCH_COMPARE_ARGS)
	$(BENCH_VENV)/bin/python -c 'import matplotlib' 2>/dev/null \
	  || (python3 -m venv $(BENCH_VENV) && $(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check 'matplotlib==3.10.*')
	$(BENCH_VENV)/bin/python e2e/compare/plot.py target/bench/compare.json target/bench/compare.png

## bench-scale: the scale figures (docs/performance.md): 1,000 and 10,000 cold sandboxes in a
## burst for each system and its bare client, CPU per sandbox (linear when flat), API requests at
## rest over 60 s, namespace deletion time, peak RSS. About an hour; SCALE_COUNTS to change N.
SCALE_COUNTS ?= 1000,10000
bench-scale: build bench-compare-build
	if [ -z "$$KUBECONFIG" ] && [ ! -s target/e2e/kubeconfig ]; then PALISADE_E2E_NODE=0 e2e/cluster/up.sh; fi
	KUBECONFIG=$${KUBECONFIG:-$(CURDIR)/target/e2e/kubeconfig} PALISADE_BIN=$(CURDIR)/target/release/palisade \
	  $(CARGO) run -q --release -p palisade-e2e --bin bench-compare -- --counts $(SCALE_COUNTS) \
	  --no-rate --no-claims --repeats 1 --rest-seconds 60 --timeout 3600 --out target/bench/scale $(BENCH_COMPARE_ARGS)

## demo: the operator end to end (local control plane unless KUBECONFIG is set)
demo:
	scripts/demo.sh

demo-down:
	-kill $$(cat target/demo/operator.pid 2>/dev/null) 2>/dev/null; rm -f target/demo/operator.pid
	-@if [ -z "$$KUBECONFIG" ]; then e2e/cluster/down.sh; fi

cluster-build:
	e2e/cluster/build.sh

cluster-up:
	e2e/cluster/up.sh

cluster-down:
	e2e/cluster/down.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## validate: the generated CRDs are valid CustomResourceDefinitions (kubernetes-validate --strict)
validate:
	"$$(scripts/pytool.sh kubernetes-validate $(KUBERNETES_VALIDATE_VERSION))/kubernetes-validate" --strict crds/*.yaml

## chart: helm lint --strict (default and all optional features), and config/ and the chart's
## CRDs are what `make manifests` generates
chart:
	scripts/chart-lint.sh
	scripts/manifests.sh --check

## scan: checkov (config in .checkov.yaml) and kubernetes-validate --strict over the rendered chart,
## everything `palisade render` produces for examples/, and the Dockerfile
scan: build
	scripts/scan.sh

## generate: regenerate every generated file (CRDs, config/ manifests, golden render outputs)
generate: crds manifests golden

crds:
	$(CARGO) run -q -- crd > crds/palisade.dev_crds.yaml
	cp crds/palisade.dev_crds.yaml charts/palisade/crds/

## manifests: config/ (kubectl apply -k config/default) from the Helm chart
manifests:
	scripts/manifests.sh

golden:
	PALISADE_UPDATE_GOLDEN=1 $(CARGO) test --test golden

## render: what the examples compile to
render:
	$(CARGO) run -q -- render -f examples/

## bench-gateway: the egress gateway beside Squid (Debian's, installed if missing) on loopback:
## CONNECT setups/s, added latency p50/p99, throughput through one tunnel, memory at 1,000 tunnels
bench-gateway:
	command -v squid >/dev/null || test -x /usr/sbin/squid || (apt-get update -qq && apt-get install -y -qq squid)
	$(CARGO) bench --bench gateway

## bench: time to compile one sandbox (criterion)
bench:
	$(CARGO) bench --bench compile

## fuzz: cargo fuzz targets (fuzz/) for FUZZ_SECONDS each (300), with libFuzzer; fails on any
## crash, timeout or out-of-memory (nightly toolchain; cargo-fuzz is installed on first use)
fuzz:
	scripts/fuzz.sh
