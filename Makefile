SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -euc
.DEFAULT_GOAL := build

GO        ?= go
BIN       := bin/zk-migrate
SIM       := bin/mesos-sim
PKGS      := ./...
FUZZTIME  ?= 60s

.PHONY: golden build mesos-sim test test-dual test-short bench soak demo chaos sandbox lint deps gen verify-gen fix-gen verify-fmt fix-fmt fuzz clean dashboards verify-dashboards

build: mesos-sim ## build bin/zk-migrate and bin/mesos-sim
	$(GO) build -o $(BIN) ./cmd/zk-migrate

mesos-sim: ## build bin/mesos-sim, the Mesos emulator (cgo: needs libzookeeper-mt-dev)
	$(GO) build -o $(SIM) ./cmd/mesos-sim

deps: ## install Debian packages (ZooKeeper, clients) and Go modules
	bash scripts/deps.sh

test: ## the whole suite against real ZooKeeper ensembles (what CI runs), then the real-client tests through a two-ensemble proxy
	$(GO) test -race -count=1 -timeout 15m $(PKGS)
	$(MAKE) test-dual

test-dual: ## the real-client proxy tests (go-zookeeper, kazoo, C, zkCli) through a two-ensemble proxy
	$(GO) test -race -count=1 -timeout 10m ./proxy/ -run 'TestGoClient|TestWatches|TestDigest|TestSessionSurvivesUpstream|TestCClient|TestKazoo|TestZkCli|TestCCli|TestBadClients|TestFourLetter' -args -two-ensembles

test-short: ## unit tests only, no JVMs
	$(GO) test -short -count=1 $(PKGS)

bench: ## proxy vs direct-to-ZooKeeper, printed side by side with ratios
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./bench/
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./bench/scale/

soak: ## long mixed load through the proxy with server kills
	ZKM_SOAK=10m $(GO) test -run TestSoak -v -timeout 30m ./bench/

ROLLBACK ?=

demo: deps build ## migrate an emulated Mesos cluster from ZooKeeper A to B through the control plane and report (ROLLBACK=N: roll back at phase N)
	@$(BIN) demo $(if $(ROLLBACK),--rollback $(ROLLBACK))

CHAOS ?= zk,proxy,partition,delay
CHAOS_AT ?= flip,2,3,4,5
CHAOS_AT_ROLLBACK ?= flip,2,3,rollback

chaos: deps build ## the demo under faults (CHAOS=zk,proxy,partition,delay[,control]) at every step (CHAOS_AT, CHAOS_AT_ROLLBACK), migrating to the end and then rolled back at phase 3
	@$(BIN) demo --chaos $(CHAOS) --chaos-at $(CHAOS_AT)
	@$(BIN) demo --chaos $(CHAOS) --chaos-at $(CHAOS_AT_ROLLBACK) --rollback 3
	$(GO) test -race -count=1 -run 'TestFlipScenario' ./cmd/zk-migrate/

sandbox: build ## the load sandbox: real ensembles A and B, proxies, Mesos-shaped Go load, servers killed
	$(BIN) sandbox

fuzz: ## fuzz every jute decoder for FUZZTIME each
	bash scripts/fuzz.sh $(FUZZTIME)

lint: verify-fmt verify-gen verify-dashboards ## gofmt, go vet, generated code and dashboards current
	$(GO) vet $(PKGS)

gen fix-gen: ## regenerate jute record codecs
	cd jute && $(GO) generate ./...

verify-gen: ## fail if jute/records_gen.go is stale
	cd jute && $(GO) run ./internal/gen -in records.go -out /tmp/zkm-records_gen.go && diff -u records_gen.go /tmp/zkm-records_gen.go

dashboards: ## regenerate deploy/grafana/*.json from deploy/grafana/gen
	$(GO) run ./deploy/grafana/gen -dir deploy/grafana

verify-dashboards: ## fail if deploy/grafana/*.json is stale
	$(GO) run ./deploy/grafana/gen -dir deploy/grafana -check

verify-fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out (run make fix-fmt)"; exit 1; fi

fix-fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin

golden: ## re-record golden frames from real clients and a real server
	cd jute && $(GO) run ./internal/capture
