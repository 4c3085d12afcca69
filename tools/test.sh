#!/usr/bin/env sh
# Everything the project checks (what .ci/run runs): the engine's tests, then the Python
# package's — built into a venv under target/ from the engine that `cargo test` just
# compiled, installed, and run with pytest (sh tools/python_tests.sh does that part alone).
set -eu
cd "$(dirname "$0")/.."
cargo test --locked
sh tools/python_tests.sh
