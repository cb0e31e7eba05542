"""The Tune sweeps on a local Ray, for real: smoke sweeps of 2 trials each, an interrupted sweep
that resumes without rerunning its finished trial, and one-line errors for bad search spaces."""

import csv
import importlib
import json
import signal
import subprocess
import sys
import time

import pytest

from hw4.registry import read_best

from .conftest import ROOT, cli_in_process, needs_data

pytestmark = [pytest.mark.ray]


def sweep(name, *args, **kw):
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / f"{name}.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc, timeout=600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def check_table_and_registry(folder, storage, kind, metric, better, stoppable=False):
    """Two trials in the table; the best finished one is best.json and the registry's entry.
    ``stoppable``: ASHA may have stopped one early (status "stopped", no artifacts)."""
    rows = list(csv.DictReader((folder / "results.csv").open()))
    statuses = {"done", "stopped"} if stoppable else {"done"}
    assert len(rows) == 2 and {r["status"] for r in rows} <= statuses, rows
    done = [r for r in rows if r["status"] == "done"]
    assert done, rows
    best = json.loads((folder / "best.json").read_text())
    assert float(best[metric]) == better(float(r[metric]) for r in done)
    record = read_best(storage, kind)
    assert record["registered_from"] == best["checkpoint"] and record["metric"] == metric
    assert (folder / "results.md").read_text().count("| done |") == len(done)
    return rows, best


@needs_data
def test_vae_sweep_interrupted_after_one_trial_resumes_and_registers_the_best(tmp_path):
    args = ("--smoke-test", "--register", "--storage-path", str(tmp_path))
    first = sweep("tune_vae_beta", *args)
    runs = tmp_path / "vae-beta-sweep-runs"
    deadline = time.time() + 400
    # one trial at a time: the second run's folder appears once Tune has recorded the first as done
    while len(list(runs.glob("*"))) < 2 and time.time() < deadline:
        assert first.poll() is None, first.communicate()[0][-3000:]
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)  # Tune saves the experiment state and exits
    first.communicate(timeout=180)
    done = list(runs.glob("*/artifacts/checkpoint.pt"))
    assert len(done) == 1, "the sweep was meant to stop after its first trial"
    stamp = done[0].stat().st_mtime_ns

    out = finish(sweep("tune_vae_beta", *args))
    assert "resuming the sweep" in out
    assert done[0].stat().st_mtime_ns == stamp, "the finished trial ran again"
    folder = tmp_path / "vae-beta-sweep"
    rows, _ = check_table_and_registry(folder, tmp_path, "vae", "val_elbo", max)
    assert {float(r["beta"]) for r in rows} == {0.5, 4.0}
    assert (folder / "rate_distortion.png").read_bytes()[:4] == b"\x89PNG"


@needs_data
def test_ddpm_schedule_sweep_compares_trials_by_fid(tmp_path):
    out = finish(sweep("tune_ddpm_schedule", "--smoke-test", "--register", "--storage-path",
                       str(tmp_path)))
    folder = tmp_path / "ddpm-schedule-sweep"
    rows, best = check_table_and_registry(folder, tmp_path, "ddpm", "fid", min, stoppable=True)
    assert {r["schedule"] for r in rows} == {"linear", "cosine"}
    assert (folder / "fid_by_trial.png").read_bytes()[:4] == b"\x89PNG"
    assert "table, plot and best trial" in out


@pytest.mark.parametrize("name, args, message", [
    ("tune_vae_beta", ["--betas", "0", "1"], "--betas must be positive"),
    ("tune_vae_beta", ["--beta-range", "5", "1"], "--beta-range needs 0 < LOW < HIGH"),
    ("tune_vae_beta", ["--latent-dims", "0"], "--latent-dims must be >= 1"),
    ("tune_vae_beta", ["--num-samples", "0"], "--num-samples must be >= 1"),
    ("tune_ddpm_schedule", ["--schedules", "linear", "quadratic"], "--schedules must be among"),
    ("tune_ddpm_schedule", ["--predictions", "score"], "--predictions must be among"),
    ("tune_ddpm_schedule", ["--timesteps", "10"], "--timesteps must be >= --sample-steps"),
    ("tune_ddpm_schedule", ["--max-concurrent", "x"], "invalid int value"),
])
def test_bad_search_space_exits_2_with_one_line(name, args, message, tmp_path, capsys):
    main = importlib.import_module(f"jobs.{name}").main
    code, err = cli_in_process(main, [*args, "--storage-path", str(tmp_path)], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
