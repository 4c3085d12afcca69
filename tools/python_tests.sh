#!/usr/bin/env sh
# The Python package's tests: makes a venv (target/pyvenv, or $IALG_PY_VENV), installs
# the test tools from PyPI (maturin, pytest, nbclient, ipykernel, Ray), builds the wheel
# with maturin in the dev profile — the profile `cargo test` built the engine in, so only
# the bindings compile (a release wheel would rebuild candle and polars: `pip install
# ./python` is the user's command) — installs it, and runs python/tests (the notebook,
# the Ray audit on a local cluster, and examples/ray_audit.py among them).
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
venv=${IALG_PY_VENV:-$root/target/pyvenv}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" || {
        # Debian's python3 keeps venv in a package of its own.
        SUDO=""
        if [ "$(id -u)" != 0 ]; then SUDO=sudo; fi
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv >/dev/null
        python3 -m venv "$venv"
    }
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    "maturin>=1.7,<2" "pytest>=7" "nbclient>=0.9" "nbformat>=5" "ipykernel>=6" \
    "ray[data]>=2.9" "pyarrow>=14"
rm -rf "$root/target/wheels"
"$venv/bin/maturin" build --quiet --locked --profile dev --manifest-path python/Cargo.toml \
    --interpreter "$venv/bin/python" --out "$root/target/wheels"
# The wheel, as a user's pip would install it (its dependencies: numpy, polars, tqdm).
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall \
    "$root"/target/wheels/ialgebra-*.whl
# Tests that need an optional tool (Ray, nbclient) skip without it, except here.
export IALG_REQUIRE_PYTHON_EXTRAS=1
# pytest's own script from the repository's root: `python -m pytest` in python/ would put
# the source folder python/ialgebra (which has no compiled engine) before the wheel.
"$venv/bin/pytest" -q -p no:cacheprovider python/tests
