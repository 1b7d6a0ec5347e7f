# colony's front door. `make run-cluster` runs the local cluster, `make test` passes the tests.
COLONY := target/release/colony

.PHONY: run run-cluster run-cluster-tls run-cluster-nats test bench lint fmt build

build:
	cargo build --release -p actors --bin colony

run: build
	$(COLONY) node --config configs/single.yaml

# The master, which spawns worker-a and worker-b from its `spawn:` list and keeps
# them running; Ctrl-C drains and stops all three.
run-cluster: build .colony/cluster.secret
	@echo "colony API on http://127.0.0.1:8000 (worker-a :8001, worker-b :8002) — try, from another terminal:"
	@echo "  $(COLONY) request math sum '{\"a\":1,\"b\":2}'   and   $(COLONY) status"
	$(COLONY) node --config configs/master.yaml

# The same cluster with mutual TLS on the bridge (configs/tls/): a certificate per
# node, made once by `colony certs` into .colony/certs.
run-cluster-tls: build .colony/cluster.secret .colony/certs/ca.pem
	@echo "colony API on http://127.0.0.1:8000, the bridge over TLS with the certificates in .colony/certs"
	$(COLONY) node --config configs/tls/master.yaml

# The same cluster over NATS (configs/nats/): a nats-server with JetStream on
# 127.0.0.1:4222 (configs/nats/nats-server.conf; store and log in .colony/nats), then
# the master, which spawns worker-a and worker-b. Ctrl-C stops the nodes, then the
# server (it runs in its own session, so the Ctrl-C reaches only the nodes).
run-cluster-nats: build
	@mkdir -p .colony/nats; nats=$$(bash scripts/nats-server.sh) || exit 1; \
	$$(command -v setsid) "$$nats" -c configs/nats/nats-server.conf --ports_file_dir .colony/nats & server=$$!; \
	trap 'kill $$server 2>/dev/null; wait $$server' EXIT; trap 'exit 130' INT TERM; \
	until ls .colony/nats/*_$$server.ports >/dev/null 2>&1; do \
	  kill -0 $$server 2>/dev/null || { echo "nats-server did not start (.colony/nats/nats-server.log):" >&2; tail -n 2 .colony/nats/nats-server.log >&2; exit 1; }; sleep 0.1; done; \
	echo "nats-server on nats://127.0.0.1:4222 (log .colony/nats/nats-server.log); colony API on http://127.0.0.1:8000 — try, from another terminal:"; \
	echo "  $(COLONY) request math sum '{\"a\":1,\"b\":2}'   and   $(COLONY) status"; \
	$(COLONY) node --config configs/nats/master.yaml

.colony/certs/ca.pem: | build
	$(COLONY) certs .colony/certs --nodes master,worker-a,worker-b

# The shared cluster secret, made once and never committed; readable by its
# owner only from the first byte (a node refuses a secret others can read).
.colony/cluster.secret:
	@mkdir -p .colony
	@(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > $@)

# nats-server 2.10+ first (from PATH, else installed once into .colony/tools): the
# NATS tests start their own servers. Chromium (from PATH, else Debian's package) for
# the dashboard's browser test.
test:
	bash scripts/nats-server.sh >/dev/null
	bash scripts/chromium.sh >/dev/null
	bash scripts/messenger-npm.sh
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace

bench:
	cargo bench --bench request_reply
	cargo bench --bench bridge_request_reply
	cargo bench --bench nats_request_reply
	cargo bench --bench messaging
	cargo bench -p actors --bench operations
	bash scripts/messenger-npm.sh
	cargo bench -p actors --bench messenger_speakers

lint:
	cargo clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

fmt:
	cargo fmt --all
