"""The benchmark scripts run end to end in their tiny modes (no timing assertions)."""

import json
import subprocess
import sys

import pytest

from .conftest import ROOT


@pytest.mark.ray
def test_serve_latency_bench_runs_tiny(tmp_path):
    out = tmp_path / "serve.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "serve_latency.py"), "--tiny",
                          "--port", "8315", "--out", str(out)], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result["serve"]) == {"batched", "unbatched"}
    assert all(r["images_per_s"] > 0 and r["p99_ms"] >= r["p50_ms"]
               for rows in result["serve"].values() for r in rows)
    assert "| batched | 4 |" in run.stdout


def test_sampler_speed_bench_runs_tiny(tmp_path):
    out = tmp_path / "speed.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "sampler_speed.py"), "--tiny",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["sampler"] for r in rows] == ["ddpm", "ddim:5"]
    assert rows[0]["speedup_vs_ddpm"] == 1.0 and all(r["median_s"] > 0 for r in rows)
