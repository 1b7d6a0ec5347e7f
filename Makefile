# colony's front door. `make run-cluster` runs the local cluster, `make test` passes the tests.
COLONY := target/release/colony

.PHONY: run run-cluster test bench lint fmt build

build:
	cargo build --release -p actors --bin colony

run: build
	$(COLONY) node --config configs/single.yaml

# One node until nodes can be bridged; it serves every example service.
run-cluster: build
	@echo "colony API on http://127.0.0.1:8000 — try, from another terminal:"
	@echo "  $(COLONY) request math sum '{\"a\":1,\"b\":2}'"
	$(COLONY) node --config configs/single.yaml

test:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace

bench:
	cargo bench --bench request_reply

lint:
	cargo clippy --workspace --all-targets -- -D warnings
	RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

fmt:
	cargo fmt --all
