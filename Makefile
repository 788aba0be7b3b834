# Caplance. `make help` lists the targets.

PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
DESTDIR    ?=
VERSION    ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo 0.0.0-dev)

GO         ?= go
LDFLAGS    := -X github.com/caplance/caplance/internal/version.Version=$(VERSION)
COMMANDS   := caplanced caplancectl caplance-healthd
GO_MD2MAN  ?= go-md2man
MANPAGES   := $(patsubst man/%.md,build/man/%,$(wildcard man/*.md))
BENCHTIME  ?= 1s
FUZZTIME   ?= 30s

.PHONY: all build test bench bench-dataplane bench-http fuzz lint demo demo-fleet completions man deb rpm vm-test security-doc clean help

all: build

build: ## Build the three commands into bin/
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/ $(addprefix ./,$(COMMANDS))

test: lint ## Lint, then run every test with the race detector (root tests need root)
	$(GO) test -race -count=1 ./...

bench: ## Run the micro-benchmarks (root for the hot path); each prints its ratio to a same-run baseline
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) $$($(GO) list ./internal/... | grep -v /e2e)

bench-dataplane: ## As root: UDP through caplanced (raw, xdp) vs kernel IP forwarding (max, highest lossless rate, CPU per packet; IPv4 and IPv6), then CPU per packet at one paced rate and idle CPU, same generator
	$(GO) test -run '^$$' -bench 'Dataplane|PacedForwarding|IdleCPU' -benchtime 1x -count 1 ./internal/e2e/

bench-http: ## As root: HTTP through the VIP (ab -c 50), caplanced vs kernel forwarding, same run
	$(GO) test -run '^$$' -bench HTTP -benchtime 1x -count 1 ./internal/e2e/

fuzz: ## Run every fuzz target for FUZZTIME each
	@set -e; for pkg in $$($(GO) list ./internal/...); do \
		for target in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$target"; \
			$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

lint: ## gofmt, go vet and staticcheck must be clean
	@out=$$(gofmt -l $$(git ls-files '*.go') $$(git ls-files --others --exclude-standard '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	staticcheck ./...

demo: build ## As root: two services over their own pools in namespaces, a live add-service, who served what
	$(GO) run ./contrib/demo --caplanced bin/caplanced --caplancectl bin/caplancectl

demo-fleet: build ## As root: three balancers behind a router's ECMP with BIRD, a rolling restart under load, maintenance, who served what
	$(GO) run ./contrib/demo-fleet --caplanced bin/caplanced --caplancectl bin/caplancectl

completions: ## Regenerate contrib/completions (cobra's scripts, which ask caplancectl on each TAB; a test checks they are current)
	$(GO) run ./caplancectl completion bash > contrib/completions/caplancectl.bash
	$(GO) run ./caplancectl completion zsh > contrib/completions/_caplancectl
	$(GO) run ./caplancectl completion fish > contrib/completions/caplancectl.fish

man: $(MANPAGES) ## Render man/*.md to roff in build/man/ (go test ./man lints them with mandoc)

build/man/%: man/%.md
	@mkdir -p $(@D)
	$(GO_MD2MAN) -in $< -out $@

deb: man ## Build build/caplance_<version>-1_amd64.deb with nfpm (packaging/build.sh)
	VERSION='$(VERSION)' GO='$(GO)' MAN_DIR=build/man packaging/build.sh deb

rpm: man ## Build build/caplance-<version>-1.x86_64.rpm with nfpm (packaging/build.sh)
	VERSION='$(VERSION)' GO='$(GO)' MAN_DIR=build/man packaging/build.sh rpm

vm-test: man ## As root: install the .deb on Debian 12 under qemu (systemd, system bus, kernel fou) and test it; see packaging/vm/README.md
	deb=$$(VERSION='$(VERSION)' GO='$(GO)' MAN_DIR=build/man packaging/build.sh deb) && \
		packaging/vm/vm-test.sh run "$$deb"

SECURITY_UNITS := caplanced.service caplance-healthd.service

security-doc: ## Write the units' systemd-analyze security exposure into docs/security.md (a test checks it is current)
	@{ sed '/^<!-- begin: make security-doc -->$$/q' docs/security.md; \
	  printf '\nMeasured with %s, `systemd-analyze security --offline=true`:\n\n| unit | exposure |\n|---|---|\n' \
	    "$$(systemd-analyze --version | head -n 1)"; \
	  for u in $(SECURITY_UNITS); do systemd-analyze security --offline=true packaging/systemd/$$u | \
	    sed -n 's/.*Overall exposure level for \([^:]*\): \([0-9.]*\).*/| \1 | \2 |/p'; done; \
	  for u in $(SECURITY_UNITS); do printf '\nWhat %s still exposes:\n\n```\n' $$u; \
	    systemd-analyze security --offline=true packaging/systemd/$$u | grep '^✗' | sed 's/ *$$//'; printf '```\n'; done; \
	  echo; sed -n '/^<!-- end: make security-doc -->$$/,$$p' docs/security.md; \
	} > docs/security.md.new && mv docs/security.md.new docs/security.md

clean: ## Remove build output
	rm -rf bin/ build/

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'
