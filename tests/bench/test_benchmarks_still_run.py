"""The quick benchmarks still run against the current code (tiny sizes; nothing is timed).

A benchmark is run by hand, so an interface change can break it unnoticed; these run the
in-process ones at a size of seconds and check that they finish and print their figures.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_campaign_scale_runs_on_both_databases() -> None:
    out = _run("bench/campaign_scale.py", "--vehicles", "200")
    assert "SQLite" in out and "PostgreSQL" in out
    assert out.count("slowest step") == 2
    assert "rows written by table" in out


def test_campaign_scale_releases_a_large_wave_over_several_steps() -> None:
    out = _run(
        "bench/campaign_scale.py", "--vehicles", "2000", "--backend", "sqlite",
        "--release-batch", "300",
    )  # fmt: skip
    # Waves 3 and 4 add 800 and 1,000 of the 2,000 vehicles: 3 and 4 steps of at most 300.
    assert "wave 3's release, step 3" in out
    assert "wave 3's release, step 4" not in out
    assert "wave 4's release, step 4" in out
    assert "wave 4's release, step 5" not in out
    assert "idle, campaign completed" in out


def test_tuf_scale_runs() -> None:
    out = _run("bench/tuf_scale.py", "--images", "100")
    assert "refresh after one new image" in out
    assert "publish one image" in out
