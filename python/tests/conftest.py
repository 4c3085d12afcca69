"""Shared fixtures: the repository's shipped models and data, and the `ialg` binary that
`cargo test` built (the CLI the frames are compared with)."""

import os
import pathlib
import shutil

import numpy as np
import pytest

import ialgebra

ROOT = pathlib.Path(__file__).resolve().parents[2]
CNN = ROOT / "models" / "digits_cnn.safetensors"
CNN_ARCH = ROOT / "models" / "digits_cnn.json"
DIGITS_X = ROOT / "data" / "digits_test_x.npy"
DIGITS_Y = ROOT / "data" / "digits_test_y.npy"


def ialg_binary() -> str:
    """$IALG_BIN, else the debug build in the target folder, else `ialg` on PATH."""
    if os.environ.get("IALG_BIN"):
        return os.environ["IALG_BIN"]
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("debug", "release"):
        candidate = target / profile / "ialg"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("ialg")
    if found:
        return found
    pytest.fail("no ialg binary: run `cargo build` (or set IALG_BIN) before these tests")


def require(module: str):
    """Imports an optional test tool (Ray, nbclient, torch): skips without it, except
    where IALG_REQUIRE_PYTHON_EXTRAS is set (CI), where a missing tool fails."""
    if os.environ.get("IALG_REQUIRE_PYTHON_EXTRAS") and module != "torch":
        return __import__(module)
    return pytest.importorskip(module)


@pytest.fixture
def session():
    """A Session with the digits CNN as `cnn` and the test digits as `digits`."""
    s = ialgebra.Session(progress=False)
    s.load_model("cnn", CNN, arch=CNN_ARCH)
    s.load_data("digits", np.load(DIGITS_X), labels=np.load(DIGITS_Y))
    return s
