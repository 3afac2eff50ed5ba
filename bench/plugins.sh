#!/usr/bin/env bash
# Plugin cost per transaction and per hook call (gateway/benches/plugins.rs):
# builds the example plugins (Rust for wasm32-wasip2, Python with
# componentize-py), then runs the benchmark in release mode; with
# --criterion, the criterion benchmarks of the plugin path instead.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore componentize-py==0.25.1
cargo build --release --locked --target wasm32-wasip2 --target-dir target/wasm-plugins \
    --manifest-path plugins/Cargo.toml -p spam-score -p header-rewrite -p smarthost-router
PYTHONDONTWRITEBYTECODE=1 componentize-py -d plugins/external-tagger/wit -w tagger componentize -p plugins/external-tagger app \
    -o target/wasm-plugins/external_tagger.wasm
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
if [ "${1:-}" = "--criterion" ]; then
    # The criterion benchmarks of the plugin path (gateway/benches/plugin_path.rs).
    MAILGATE_BENCH_PLUGINS="$PWD/target/wasm-plugins/wasm32-wasip2/release" \
        cargo bench --locked -p mailgate --bench plugin_path
    exit
fi
cargo bench --locked -p mailgate --bench plugins -- \
    "$PWD/target/wasm-plugins/wasm32-wasip2/release" "$PWD/target/wasm-plugins/external_tagger.wasm"
