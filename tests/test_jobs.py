"""The Ray Train jobs, run for real as subprocesses on a local Ray (each starts and stops its own)."""

import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from hw4.checkpoint import load_checkpoint
from hw4.errors import HW4Error
from hw4.registry import read_best
from jobs.runs import latest_recorded_epoch

from .conftest import ROOT, cli_in_process, needs_data, start_ray_head, stop_ray_head

pytestmark = [pytest.mark.ray]


def job(name: str, *args: str, timeout: int = 300, env: dict | None = None, **kw):
    cmd = [sys.executable, str(ROOT / "jobs" / f"{name}.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})}, **kw)


def run_ok(name: str, *args: str) -> None:
    out = job(name, *args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def assert_png(path: Path) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] >= 28


def checkpoints(run: Path) -> list[Path]:
    return sorted(run.glob("checkpoint_*/checkpoint.pt"))


def process_tree(root: int) -> list[int]:
    """``root``'s descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(proc.name))
    tree, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            tree.append(child)
            todo.append(child)
    return tree


def check_fault_recovery(run: Path, fault: str) -> list[dict]:
    """The injected fault happened, the restarted worker group resumed from the checkpoint
    before it, and every kept checkpoint is whole."""
    assert (run / "fault_injected").read_text().startswith(fault)
    history = json.loads((run / "artifacts" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history][:3] == [0, 1, 2]  # nothing lost, nothing repeated
    assert history[2]["resumed_from_epoch"] == 2  # the restarted group began at epoch 2
    for ckpt in checkpoints(run):
        load_checkpoint(ckpt)
    return history


@needs_data
def test_a_killed_job_resumes_on_two_workers_through_a_killed_worker_and_registers(tmp_path):
    """A VAE run through three failures: its driver and local Ray are SIGKILLed mid-run; a rerun
    of the same name with another config is refused (exit 2, one line); the rerun with
    ``--resume`` continues from the last checkpoint on two workers, one of which is SIGKILLed at
    an epoch, and the restarted worker group resumes from the checkpoint before it. The finished
    run has every artifact and registers."""
    # 4096 images: epochs long enough (about 1 s) that checkpoints do not rotate faster than Ray
    # records them, so the checkpoint Ray recorded is still on disk when the driver is killed
    args = ["--smoke-test", "--storage-path", str(tmp_path), "--name", "k", "--beta", "0.5",
            "--train-subset", "4096"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "jobs" / "train_vae.py"), *args,
                             "--epochs", "400"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    run = tmp_path / "k"
    try:  # killed once Ray has recorded a checkpoint
        deadline = time.time() + 240
        while latest_recorded_epoch(run) is None and time.time() < deadline:
            assert proc.poll() is None, "the run ended before it was killed"
            time.sleep(0.1)
        assert latest_recorded_epoch(run) is not None, "no checkpoint recorded before the deadline"
    finally:  # the driver and every process of the local Ray it started
        tree = process_tree(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        for pid in tree:  # Ray's workers have groups of their own and outlived the killpg
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 30
        while any(Path(f"/proc/{pid}").exists() for pid in tree) and time.time() < deadline:
            time.sleep(0.1)
    done = max(load_checkpoint(c)["epoch"] for c in checkpoints(run))
    epochs, fault_epoch = done + 4, done + 2
    more = [*args, "--epochs", str(epochs)]
    refused = job("train_vae", *more, timeout=120)  # a changed config is not resumed silently
    assert refused.returncode == 2 and f"--epochs 400 -> {epochs}" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    run_ok("train_vae", *more, "--resume", "--num-workers", "2", "--register",
           "--inject-fault", "kill", "--fault-epoch", str(fault_epoch))

    assert (run / "fault_injected").read_text().startswith("kill")
    history = json.loads((run / "artifacts" / "metrics.json").read_text())["history"]
    vae = [h for h in history if h["phase"] == "vae"]  # then the classifier heads' epochs
    assert [h["epoch"] for h in vae] == list(range(epochs))  # nothing lost, nothing repeated
    # the rerun resumes from the newest checkpoint Ray had recorded: the newest on disk, or an
    # earlier one when the kill came before Ray collected the latest reports
    assert 1 <= max(h["resumed_from_epoch"] for h in vae[:fault_epoch]) <= done + 1
    assert vae[fault_epoch]["resumed_from_epoch"] == fault_epoch  # the restarted group
    changed = json.loads((run / "changes.json").read_text())[0]["changed"]
    assert changed["epochs"] == {"from": 400, "to": epochs}
    for ckpt in checkpoints(run):
        load_checkpoint(ckpt)
    art = run / "artifacts"
    state = load_checkpoint(art / "checkpoint.pt")
    assert set(state["extra"]["classifiers"]) == {"probe_head", "finetune", "optimizers"}
    assert state["model_config"]["variational"] is True
    for png in ("reconstructions.png", "traversal.png", "samples.png"):
        assert_png(art / png)
    summary = json.loads((art / "metrics.json").read_text())
    final = summary["final"]
    assert {"val_elbo", "val_kl", "val_recon", "probe_accuracy", "finetune_accuracy"} <= set(final)
    assert len(final["val_kl_per_dim"]) == 4 and summary["config"]["num_workers"] == 2
    best = read_best(tmp_path, "vae")
    assert best["config"]["beta"] == 0.5 and best["registered_from"] == str(art / "checkpoint.pt")
    assert best["value"] == final["val_loss"]


@pytest.mark.parametrize("name,args,message", [
    ("train_ddpm", ["--schedule", "quadratic"], "invalid choice: 'quadratic'"),
    ("train_ddpm", ["--timesteps", "1"], "--timesteps must be >= 2"),
    ("train_ddpm", ["--groups", "5"], "must divide every width"),
    ("train_vae", ["--beta", "-1"], "--beta must be >= 0"),
    ("train_vae", ["--latent-dim", "x"], "invalid int value"),
])
def test_bad_arguments_exit_2_with_one_line(name, args, message, capsys):
    code, err = cli_in_process(importlib.import_module(f"jobs.{name}").main, args, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0], err


@pytest.mark.parametrize("name", ["train_ddpm", "train_vae"])
def test_missing_data_dir_exits_2(tmp_path, name, capsys, monkeypatch):
    monkeypatch.setenv("HW4_DATA_DIR", str(tmp_path / "none"))
    code, err = cli_in_process(importlib.import_module(f"jobs.{name}").main, ["--smoke-test"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "HW4_DATA_DIR" in err


def test_the_command_line_itself_exits_2_with_one_line(tmp_path):
    """The same refusal through the real entry point (a new interpreter, once)."""
    out = job("train_ddpm", "--smoke-test", timeout=60, env={"HW4_DATA_DIR": str(tmp_path / "none")})
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "HW4_DATA_DIR" in out.stderr


@needs_data
def test_ray_job_submit_runs_two_ddpm_workers_through_a_raised_fault(tmp_path):
    """`ray job submit` on a local head (token auth, data folder through the runtime environment,
    as on a cluster): a DDPM smoke run on two workers with an exception injected at epoch 2
    restarts its worker group, resumes, and writes every artifact. Its wall-clock budget
    (--train-minutes, ample here) is timed on both workers, which agree on one step count, and
    the resumed group keeps the count fixed at the start."""
    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    # the venv first on PATH, as after `source .venv/bin/activate`: the job's `python` is its python
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    # the data folder reaches the job only through its runtime environment, as on a cluster
    data_dir = os.environ["HW4_DATA_DIR"]
    env = {**{k: v for k, v in os.environ.items() if k != "HW4_DATA_DIR"}, "RAY_AUTH_MODE": "token",
           "PATH": path}
    port = 8275
    start_ray_head(6390, port, num_cpus=2, env=env)
    try:  # no trace of this head where `serve run` looks for a cluster (the lost-node test's
        # cluster, alongside, writes and deletes its own address there)
        recorded = ""
        with contextlib.suppress(FileNotFoundError):
            recorded = Path("/tmp/ray/ray_current_cluster").read_text()
        assert not recorded.endswith(":6390"), recorded
        address = ["--address", f"http://127.0.0.1:{port}"]
        job_id = f"hw4-test-{os.getpid()}"
        out = subprocess.run(  # blocks until the job ends, tailing its logs
            [ray, "job", "submit", *address, "--submission-id", job_id, "--working-dir", ".",
             "--runtime-env-json", json.dumps({"env_vars": {"HW4_DATA_DIR": data_dir}}),
             "--", "python", "jobs/train_ddpm.py", "--smoke-test", "--num-workers", "2",
             "--storage-path", str(tmp_path), "--name", "d", "--epochs", "3",
             "--train-minutes", "600", "--inject-fault", "raise", "--fault-epoch", "2"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        # the driver joined this head, not the other local Ray the other pytest worker may run
        assert re.search(r"Connecting to existing Ray cluster at address: [\d.]+:6390\b", out.stdout)
        status = subprocess.run([ray, "job", "status", *address, job_id], env=env,
                                capture_output=True, text=True, timeout=60)
        assert f"job '{job_id}' succeeded" in status.stdout.lower(), status.stdout  # SUCCEEDED
    finally:
        stop_ray_head(6390)
    art = tmp_path / "d" / "artifacts"
    state = load_checkpoint(art / "checkpoint.pt")
    assert state["kind"] == "unet" and state["ema"] is not None and state["optimizer"]
    assert state["model_config"]["num_classes"] == 10  # the model's own config, apart
    assert_png(art / "samples.png")
    summary = json.loads((art / "metrics.json").read_text())
    history = check_fault_recovery(tmp_path / "d", "raise")
    assert [h["epoch"] for h in history] == [0, 1, 2]
    # 3 epochs of 8 steps (256 images, 16 per worker): the budget's cap, on both sides of the fault
    assert [(h["step"], h["planned_steps"]) for h in history] == [(8, 24), (16, 24), (24, 24)]
    assert summary["config"]["num_workers"] == 2
    assert json.loads((art / "config.json").read_text())["smoke_test"] is True
    assert not (tmp_path / "registry").exists()  # a smoke run never changes what is served
    assert list((tmp_path / "d" / "tensorboard").glob("events.out.tfevents.*"))
    for ckpt in checkpoints(tmp_path / "d"):  # the config travels with every checkpoint
        assert json.loads((ckpt.parent / "config.json").read_text())["name"] == "d"


def test_cluster_yaml_passes_ray_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))
    gpu = raw["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and gpu["min_workers"] == 0
    head_cmd = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd
    # token auth on every node, with the token synced to each; no node in Ray's default group
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token ray start" in c for c in starts if "ray start" in c)
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert all(t["node_config"]["SecurityGroupIds"] for t in raw["available_node_types"].values())
    for name, node_type in raw["available_node_types"].items():  # scoped roles, IMDSv2 only
        cfg = node_type["node_config"]
        assert cfg["MetadataOptions"]["HttpTokens"] == "required", name
        assert cfg["IamInstanceProfile"]["Arn"].endswith(f"hw4-ray-{'head' if name == 'head' else 'worker'}")
    bad = {**raw, "unknown_key": 1}
    with pytest.raises(Exception):  # noqa: B017 - Ray raises jsonschema's ValidationError
        validate_config(prepare_config(bad))


@pytest.mark.parametrize("reserved, cap, threads", [(2, None, 2), (2, "1", 1), (0.9, None, 1), (1, "4", 1)])
def test_worker_threads_are_the_reserved_cpus_at_most_the_cap(reserved, cap, threads, monkeypatch):
    from jobs.worker import THREADS_ENV, set_worker_threads

    before = torch.get_num_threads()
    if cap is None:
        monkeypatch.delenv(THREADS_ENV, raising=False)
    else:
        monkeypatch.setenv(THREADS_ENV, cap)
    try:
        set_worker_threads(reserved)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_a_bad_thread_cap_is_refused_by_the_driver(monkeypatch, capsys):
    from jobs.cli import run_cli
    from jobs.driver import init_ray
    from jobs.worker import THREADS_ENV

    monkeypatch.setenv(THREADS_ENV, "two")
    with pytest.raises(SystemExit) as exc:
        run_cli(init_ray)  # refused before any Ray starts
    assert exc.value.code == 2 and "HW4_TORCH_THREADS must be a whole number" in capsys.readouterr().err


def test_a_cut_short_ray_snapshot_is_a_clear_error_before_ray_starts(tmp_path, capsys):
    """Ray Train rewrites a run's checkpoint_manager_snapshot.json in place: a driver killed
    mid-write left it empty, and the rerun died in Ray with a CheckpointManagerInitializationError
    traceback (seen by hand: train_vae.py, snapshot emptied, rerun with --resume)."""
    from jobs import train_vae

    (tmp_path / "k").mkdir()
    (tmp_path / "k" / ".hw4-run").write_text("{}")  # a run of this project
    (tmp_path / "k" / "checkpoint_manager_snapshot.json").write_text("")
    code, err = cli_in_process(train_vae.main, ["--smoke-test", "--storage-path", str(tmp_path),
                                                "--name", "k", "--resume"], capsys)
    assert code == 2 and "is unreadable" in err and "--overwrite" in err, err
    assert len(err.strip().splitlines()) == 1


@needs_data
def test_an_autoencoder_registers_as_ae_and_never_replaces_the_served_vae(tmp_path):
    """A plain autoencoder's val_loss has no KL term, so it is lower than any VAE's: registered
    under "vae" it replaced the served VAE (seen by hand: /info named demo-ae after the
    homework's AE run). It registers as "ae" instead."""
    from jobs import train_vae

    train_vae.main(["--smoke-test", "--register", "--model", "ae", "--storage-path", str(tmp_path),
                    "--name", "ae", "--quiet"])
    assert (tmp_path / "registry" / "ae.json").is_file()
    assert not (tmp_path / "registry" / "vae.json").exists()


def test_a_run_has_one_writer_and_waits_for_a_killed_drivers_workers(tmp_path, capsys, monkeypatch):
    """A driver claims its run folder (``sole_writer``) and its workers share it
    (``hold_for_worker``); a second driver of the same --name is refused with one line, and one
    that finds workers of an earlier run still holding it waits for them to go."""
    from jobs import runs, train_ddpm

    run = tmp_path / "w"
    runs.claim_run_folder(run)  # what the driver does first
    with runs.sole_writer(run, wait_s=0.0):
        runs.hold_for_worker(run).close()  # this run's own workers share it
        with pytest.raises(HW4Error, match="another driver of this --name"):
            with runs.sole_writer(run, wait_s=0.3):
                pass
        monkeypatch.setattr(runs, "IN_USE_WAIT_S", 0.3)
        code, err = cli_in_process(train_ddpm.main, ["--smoke-test", "--storage-path", str(tmp_path),
                                                     "--name", "w"], capsys)
        assert code == 2 and "is in use by another driver" in err and len(err.splitlines()) == 1, err

    # a killed driver's worker, still alive for a while (here 2 s), holding its share
    holder = ("import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_SH); "
              "print('held', flush=True); time.sleep(float(sys.argv[2]))")
    worker = subprocess.Popen([sys.executable, "-c", holder, str(run / runs.WORKERS_LOCK), "2"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout.readline().strip() == "held"
        with pytest.raises(HW4Error, match="training workers of an earlier run"):
            with runs.sole_writer(run, wait_s=0.3):
                pass
        assert worker.poll() is None  # still holding its share when the claim starts waiting
        with runs.sole_writer(run, wait_s=30.0):  # waits for the worker to exit, then claims
            # the holder never unlocks: its lock is freed only as it exits, so the claim means
            # it has ended (or is ending: the exit status may come a moment after the unlock)
            assert worker.wait(timeout=5) == 0
    finally:
        worker.kill()
        worker.wait()


def test_overwrite_keeps_the_drivers_claim(tmp_path):
    from jobs.runs import DRIVER_LOCK, WORKERS_LOCK, check_rerun, sole_writer
    from jobs.train_ddpm import DDPMJobConfig

    run = tmp_path / "o"
    (run / "checkpoint_x").mkdir(parents=True)
    (run / "checkpoint_x" / "config.json").write_text("{}")
    (run / "metrics.json").write_text("{}")
    (run / ".hw4-run").write_text("{}")  # what a run of this project leaves first
    with sole_writer(run, wait_s=0.0):
        check_rerun(DDPMJobConfig(name="o", storage_path=str(tmp_path), overwrite=True))
        assert sorted(p.name for p in run.iterdir()) == sorted([DRIVER_LOCK, WORKERS_LOCK, ".hw4-run"])
        with pytest.raises(HW4Error, match="another driver"):  # still claimed after the wipe
            with sole_writer(run, wait_s=0.0):
                pass
