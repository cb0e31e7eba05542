"""The Tune sweeps for real, each on a local Ray of its own: early stopping of a diverging trial
with the next trial running (beside another local Ray), an interrupted Optuna sweep resumed, two
trials at once with a crashed one retried, and one-line errors for bad search spaces."""

import csv
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hw4.registry import read_best

from .conftest import ROOT, cli_in_process, needs_data

pytestmark = [pytest.mark.ray]


def sweep(name, *args, **kw):
    """The sweep as a subprocess on a local Ray of its own."""
    return subprocess.Popen([sys.executable, str(ROOT / "jobs" / f"{name}.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def finish(proc, timeout=600) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def check_table_and_registry(folder, storage, kind, metric, better, n=2):
    """``n`` trials in the table, ranked; the best finished one is best.json and the registry's
    entry."""
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert len(rows) == n and {r["status"] for r in rows} <= {"done", "stopped"}, rows
    done = [r for r in rows if r["status"] == "done"]
    assert done and [int(r["rank"]) for r in done] == list(range(1, len(done) + 1)), rows
    best = json.loads((folder / "best.json").read_text())
    assert float(best[metric]) == better(float(r[metric]) for r in done) == float(done[0][metric])
    record = read_best(storage, kind)
    assert record["registered_from"] == best["checkpoint"] and record["metric"] == metric
    assert (folder / "results.md").read_text().count("| done |") == len(done)
    return rows, best


def starts_and_ends(storage, sweep_name, row):
    """When a trial started (each attempt) and when its artifacts were written."""
    run = storage / f"{sweep_name}-runs" / row["trial_id"]
    starts = [float(line.split()[1]) for line in (run / "attempts.log").read_text().splitlines()]
    return starts, (run / "artifacts" / "checkpoint.pt").stat().st_mtime


@pytest.fixture
def another_local_ray():
    """A second local Ray on this machine, dashboard included, for as long as the test runs."""
    code = ("import sys, ray; ray.init(address='local', num_cpus=1, include_dashboard=True); "
            "print('up', flush=True); sys.stdin.read(); ray.shutdown()")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        yield
    finally:
        proc.stdin.close()  # it shuts its Ray down and exits
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@needs_data
def test_asha_stops_a_diverging_trial_at_the_first_rung_and_the_next_trial_runs(
        tmp_path, another_local_ray):
    """lr = 1 makes the VAE's loss NaN in its first epoch. ASHA must stop that trial at its
    first rung (a NaN metric would pass as unranked: the sweep reports it as the worst ELBO), and
    the trial after it must get the CPUs back and finish: one trial at a time, each holding 1.9 of
    the 2 CPUs, so a placement group left behind by the stopped trial would stall the sweep.

    With another local Ray running beside it (its dashboard on the default port) and this
    sweep's dashboard off: Ray Train's own cleaner cannot reach a state API, so the stopped
    trial's placement group is freed by the sweep (``jobs.sweep.ReleasePlacementGroups``)."""
    out = finish(sweep("tune_vae_beta", "--smoke-test", "--betas", "1", "--lrs", "0.001", "1",
                       "0.002", "--max-concurrent", "1", "--no-dashboard",
                       "--storage-path", str(tmp_path)),
                 timeout=480)  # a placement group left behind stalls the sweep until this
    rows = {float(r["lr"]): r for r in csv.DictReader(
        (tmp_path / "vae-beta-sweep" / "results.csv").open())}
    bad = rows[1.0]
    assert (bad["status"], bad["epochs"], bad["diverged"], bad["rank"]) == (
        "stopped", "1", "True", ""), bad
    assert bad["val_elbo"] == "-inf"
    assert [rows[lr]["status"] for lr in (0.001, 0.002)] == ["done", "done"], rows
    assert "3 trials: 2 finished, 1 stopped early (after epochs 1)" in out
    assert (tmp_path / "vae-beta-sweep" / "elbo_by_trial.png").read_bytes()[:4] == b"\x89PNG"


@needs_data
def test_optuna_sweep_interrupted_after_one_trial_resumes_and_registers_the_best(tmp_path):
    args = ("--smoke-test", "--search", "optuna", "--num-samples", "2", "--max-concurrent", "1",
            "--register", "--storage-path", str(tmp_path))
    first = sweep("tune_vae_beta", *args)
    runs = tmp_path / "vae-beta-sweep-runs"
    deadline = time.time() + 400
    # one trial at a time: the second run's folder appears once Tune has recorded the first as done
    while len(list(runs.glob("*"))) < 2 and time.time() < deadline:
        assert first.poll() is None, first.communicate()[0][-3000:]
        time.sleep(0.5)
    first.send_signal(signal.SIGINT)  # Tune saves the experiment and searcher state and exits
    first.communicate(timeout=180)
    done = list(runs.glob("*/artifacts/checkpoint.pt"))
    assert len(done) == 1, "the sweep was meant to stop after its first trial"
    stamp = done[0].stat().st_mtime_ns

    out = finish(sweep("tune_vae_beta", *args))
    assert "resuming the sweep" in out
    assert done[0].stat().st_mtime_ns == stamp, "the finished trial ran again"
    folder = tmp_path / "vae-beta-sweep"
    rows, _ = check_table_and_registry(folder, tmp_path, "vae", "val_elbo", max)
    betas = [float(r["beta"]) for r in rows]
    assert all(0.5 <= b <= 4.0 for b in betas) and betas[0] != betas[1], betas  # drawn by TPE
    assert (folder / "rate_distortion.png").read_bytes()[:4] == b"\x89PNG"


@needs_data
def test_ddpm_sweep_runs_two_trials_at_once_and_retries_a_crashed_one(tmp_path):
    """Two conditional-DDPM trials on a 2-core machine run at the same time (one CPU each, by
    default); the first one's worker is killed once and Tune restarts it from its checkpoint."""
    out = finish(sweep("tune_ddpm_schedule", "--smoke-test", "--register", "--scheduler", "none",
                       "--schedules", "linear", "--loss-weights", "uniform", "min-snr",
                       "--train-minutes", "600", "--sampler", "dpm++2m", "--inject-fault", "kill",
                       "--fault-epoch", "1", "--storage-path", str(tmp_path)))
    assert "2 trial(s) at once, 1 worker(s) each with 0.9 CPU" in out
    folder = tmp_path / "ddpm-schedule-sweep"
    # ranked by the second judge's FID by default, the pinned FID and the background beside it
    rows, best = check_table_and_registry(folder, tmp_path, "ddpm", "second_fid", min)
    assert {r["loss_weight"] for r in rows} == {"uniform", "min-snr"}
    assert all(int(r["step"]) == 16 for r in rows), rows  # the ample budget: 2 epochs of 8 steps
    assert all(float(r["fid"]) > 0 and 0 <= float(r["background_share"]) <= 1 for r in rows), rows
    assert sorted(int(r["restarts"]) for r in rows) == [0, 1], rows
    assert all(r["status"] == "done" and r["class_accuracy"] for r in rows), rows
    (a_starts, a_end), (b_starts, b_end) = (starts_and_ends(tmp_path, "ddpm-schedule-sweep", r)
                                            for r in rows)
    assert a_starts[0] < b_end and b_starts[0] < a_end, "the two trials did not overlap"
    assert (folder / "fid_by_trial.png").read_bytes()[:4] == b"\x89PNG"
    assert "table, plot and best trial" in out


@pytest.mark.parametrize("name, args, message", [
    ("tune_vae_beta", ["--betas", "0", "1"], "--betas must be positive"),
    ("tune_vae_beta", ["--beta-range", "5", "1"], "--beta-range needs 0 < LOW < HIGH"),
    ("tune_vae_beta", ["--latent-dims", "0"], "--latent-dims must be >= 1"),
    ("tune_vae_beta", ["--num-samples", "0"], "--num-samples must be >= 1"),
    ("tune_ddpm_schedule", ["--schedules", "linear", "quadratic"], "--schedules must be among"),
    ("tune_ddpm_schedule", ["--predictions", "score"], "--predictions must be among"),
    ("tune_ddpm_schedule", ["--loss-weights", "snr"], "--loss-weights must be among"),
    ("tune_ddpm_schedule", ["--rank-by", "loss"], "--rank-by must be one of"),
    ("tune_ddpm_schedule", ["--timesteps", "5"], "--timesteps must be >= the sampler's steps (10)"),
    ("tune_ddpm_schedule", ["--timesteps", "20", "--sample-steps", "30"],
     "--timesteps must be >= the sampler's steps (30)"),
    ("tune_ddpm_schedule", ["--max-concurrent", "x"], "invalid int value"),
    ("tune_ddpm_schedule", ["--p-uncond-range", "0.3", "0.1"], "--p-uncond-range needs"),
    ("tune_ddpm_schedule", ["--p-uncond-range", "0.1", "0.3"], "--p-uncond-range needs --search random"),
    ("tune_ddpm_schedule", ["--train-minutes", "5"], "--train-minutes needs --scheduler none"),
    ("tune_ddpm_schedule", ["--widths", "12"], "--widths must be positive multiples of 8"),
    ("tune_vae_beta", ["--search", "bayes"], "invalid choice"),
    ("tune_vae_beta", ["--lrs", "-1"], "--lrs must be positive"),
])
def test_bad_search_space_exits_2_with_one_line(name, args, message, tmp_path, capsys):
    main = importlib.import_module(f"jobs.{name}").main
    code, err = cli_in_process(main, [*args, "--storage-path", str(tmp_path)], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1
