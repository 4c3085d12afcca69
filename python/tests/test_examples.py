"""The example scripts run as a user runs them (examples/ray_audit.py exits non-zero unless
the Ray table equals the single-process one)."""

import subprocess
import sys

from conftest import ROOT, require


def test_ray_audit_reproduces_the_single_process_table():
    require("ray")
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ray_audit.py"), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    assert "equal to one Session: True" in run.stdout
    assert "GROUP BY input, label, prediction: in each block" in run.stdout
