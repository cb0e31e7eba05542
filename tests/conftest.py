import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from hw4 import data
from hw4.checkpoint import save_checkpoint
from hw4.models.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    LatentClassifier,
    LatentClassifierConfig,
)
from hw4.models.unet import UNet, UNetConfig

ROOT = Path(__file__).resolve().parents[1]

# Ray Train's controller polls its workers every 2 s by default, so every start, report, crash and
# finish waits up to 2 s to be seen; the tests' jobs, sweeps and heads (which inherit this
# environment) poll every 0.5 s. A smoke run took about 4 s less (BENCHMARKS.md, "Test suite").
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
# one torch thread per training worker the tests start (jobs.worker.set_worker_threads): with two
# pytest workers on 2 cores, a 2-thread worker's ops waited on a descheduled sibling thread
os.environ.setdefault("HW4_TORCH_THREADS", "1")
# Serve kills an HTTP proxy that is not ready within 5 s (RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S),
# and serve.start then fails: on 2 busy cores the proxy's imports alone took longer. The local
# Rays the tests start inherit this (jobs.driver.init_ray sets the same for a local Ray)
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
# README's `HW4_DATA_DIR=../shared/data make test`: absolute for every process the tests start
data.pin_data_dir()


# `make test` runs two pytest workers (pytest-xdist): each module's tests stay together on one
# worker (its module fixtures start once), the browser tests with tests/test_serve.py (they share
# its Serve), and the longest modules go first, so the two workers finish together.
LONGEST_FIRST = ["test_ray_tune", "test_serve", "test_web", "test_jobs", "test_cluster", "test_bench",
                 "test_serve_deploy", "test_evaluation", "test_models"]  # from --durations
SAME_WORKER = {"tests/test_web.py": "tests/test_serve.py"}
IN_A_WORKER = "PYTEST_XDIST_WORKER" in os.environ


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: file order otherwise


def pytest_collection_finish(session):
    """Note the last test that uses the test run's Serve (after -k and -m have deselected):
    ``pytest_runtest_teardown`` stops it there."""
    users = [item.nodeid for item in session.items if "serve_apps" in item.fixturenames]
    _last_serve_test[:] = users[-1:]


def pytest_xdist_make_scheduler(config, log):
    """Whole modules to a worker, in the order above. (``--dist loadgroup`` would need marks that
    pytest-xdist 3.8 can no longer put into pytest 9's node ids.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return SAME_WORKER.get(module, module)

        def _reschedule(self, node) -> None:
            # the next module only once a worker is on its last test (pytest-xdist asks at two): a
            # long module given early to a busy worker left the other idle at the end
            if self.workqueue and self._pending_of(self.assigned_work[node]) > 1:
                return
            super()._reschedule(node)

    config.option.loadscopereorder = False  # keep the order above, not the most tests first
    return ByModule(config, log)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    # beside another pytest worker, two threads per process would wait on each other's cores
    torch.set_num_threads(1 if IN_A_WORKER else min(2, os.cpu_count() or 1))


def have_data() -> bool:
    d = os.environ.get("HW4_DATA_DIR")
    return bool(d) and (Path(d) / "MNIST" / "raw").is_dir()


needs_data = pytest.mark.skipif(
    not have_data(), reason="set HW4_DATA_DIR to a folder with MNIST/ and FashionMNIST/ (CI does)"
)


def cli_in_process(main, argv: list[str], capsys) -> tuple[int, str]:
    """Run a job's ``main(argv)`` as its command line does (``run_cli``), in this process: the
    exit code and stderr of a refused invocation, without a new interpreter's start-up."""
    from jobs.cli import run_cli

    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: main(argv))
    return exc.value.code, capsys.readouterr().err


# --- tiny checkpoints in the format the training jobs write (no training) ---------------------

VAE_CFG = dict(model="vae", latent_dim=4, channels=8, hidden=32, beta=1.0)
DDPM_CFG = dict(base_channels=8, channel_mults=[1, 2], num_res_blocks=1, attention_resolutions=[2],
                num_heads=2, groups=4, dropout=0.0, schedule="linear", timesteps=20, prediction="eps")


def write_vae(path, with_heads=True):
    vae = Autoencoder(AutoencoderConfig(latent_dim=4, channels=8, hidden=32))
    extra = {}
    if with_heads:
        probe = LatentClassifier(vae.encoder, 4, LatentClassifierConfig(mode="probe"))
        fine = LatentClassifier(Autoencoder(vae.config).encoder, 4,
                                LatentClassifierConfig(mode="finetune"))
        extra["classifiers"] = {"probe_head": probe.head.state_dict(),
                                "finetune": fine.state_dict(), "optimizers": {}}
    return save_checkpoint(path, kind="autoencoder", config=VAE_CFG, model=vae,
                           metrics={"val_loss": 1.0}, extra=extra)


def write_ddpm(path, num_classes: int | None = 10):
    """A tiny DDPM checkpoint, class-conditional (10 digits + the null label) by default."""
    cfg = UNetConfig(base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,), num_heads=2,
                     groups=4, dropout=0.0, num_classes=num_classes)
    unet = UNet(cfg)
    ema = {"decay": 0.9, "shadow": {k: v + 0.01 for k, v in unet.state_dict().items()}}
    return save_checkpoint(path, kind="unet", config={**DDPM_CFG, "conditional": bool(num_classes)},
                           model_config=dataclasses.asdict(cfg), model=unet, ema=ema,
                           metrics={"val_loss": 1.0})


def make_storage(root: Path) -> Path:
    """A storage folder whose registry points at a tiny VAE and a tiny DDPM."""
    from hw4.registry import record_best

    for family, write in (("vae", write_vae), ("ddpm", write_ddpm)):
        path = write(root / family / "checkpoint.pt")
        record_best(root, family, checkpoint=path, metric="val_loss", value=1.0, mode="min",
                    config={}, source=str(root / family))
    return root


# the temp folder of each head started here, by GCS port: removed when the head is stopped
_HEAD_TEMP_DIRS: dict[int, str] = {}


def poll_until(condition, timeout: float, every: float = 0.25):
    """Poll ``condition()`` until it returns a truthy value (returned) or ``timeout`` passes
    (None); a request that fails counts as not yet."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except requests.RequestException:
            pass
        time.sleep(every)
    return None


def pinned(storage, family: str = "ddpm", **extra) -> dict:
    """A model deployment's user_config as the app's builder makes it: the registry's best (or
    ``extra["checkpoint"]``) pinned with its SHA-256."""
    from serve.replica import pin_checkpoint

    return pin_checkpoint({"storage_path": str(storage), "checkpoint": None, **extra}, family)


def start_ray_head(gcs_port: int, dashboard_port: int, num_cpus: int, env: dict) -> None:
    """`ray start --head` on this machine, its dashboard on loopback, in a temp folder of its own.

    The job agent listens on a free port: at Ray's default (52365), beside another local Ray (the
    other pytest worker's), it could not, and `ray job submit` was answered "No available agent
    to submit job". The own temp folder (short: Ray's socket paths must fit 107 bytes) keeps the
    head's address out of /tmp/ray/ray_current_cluster, where a user's next `serve run` would
    find it, and it is where Ray's job supervisor looks for its own cluster: it resolves
    RAY_ADDRESS=auto for a submitted job's driver from that file, else from any GCS process on
    the machine. With a second `ray start` head (test_serve_deploy's, on the other worker)
    writing that file, one submitted driver joined another local Ray, whose Train controller was
    cancelled before it ran (seen once, in a two-worker CI run).
    Its processes, the workers included, get RAY_ADDRESS pointing back at it, as a local Ray's
    do (``jobs.driver.init_ray``): Ray Train's placement-group cleaner asks the state API of the
    cluster it finds that way whether its controller lives. Without it, with a user's cluster
    recorded in /tmp/ray, the cleaner asked that cluster and logged "Failed to query Ray Train
    Controller actor state" every second; had that cluster a dashboard, it would have taken the
    controller for dead and removed the run's placement group."""
    import ray as ray_lib

    from jobs.driver import free_ports

    ray = shutil.which("ray", path=str(Path(sys.executable).parent))
    temp_dir = _HEAD_TEMP_DIRS[gcs_port] = tempfile.mkdtemp(prefix="hw4-ray-", dir="/tmp")
    env = {**env, "RAY_ADDRESS": f"{ray_lib.util.get_node_ip_address()}:{gcs_port}"}
    subprocess.run([ray, "start", "--head", f"--num-cpus={num_cpus}", f"--port={gcs_port}",
                    f"--temp-dir={temp_dir}",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
                    f"--dashboard-agent-listen-port={free_ports(1)[0]}", "--include-dashboard=true"],
                   check=True, env=env, capture_output=True, timeout=120)


def stop_ray_head(gcs_port: int) -> None:
    """Stop the processes of the local Ray head started with ``--port=gcs_port``, by PID, and
    leave any other Ray on this machine alone (``ray stop`` would stop them all)."""
    def mine() -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if proc.name.isdigit() and int(proc.name) != os.getpid() and any(
                    a.endswith(f":{gcs_port}".encode()) or a in (f"--port={gcs_port}".encode(),
                                                                 f"--gcs_server_port={gcs_port}".encode())
                    for a in args):
                pids.append(int(proc.name))
        return pids

    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in mine():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while mine() and time.time() < deadline:
            time.sleep(0.5)
    temp_dir = _HEAD_TEMP_DIRS.pop(gcs_port, None)
    if temp_dir:  # its logs, sockets and address file
        shutil.rmtree(temp_dir, ignore_errors=True)


# --- one local Ray and Serve for every test module that talks to the app over HTTP ------------

SERVE_PORT = 8311
SERVE_URL = f"http://127.0.0.1:{SERVE_PORT}"
SERVE_TOKEN_ENV, SERVE_TOKEN = "HW4_TEST_SERVE_TOKEN", "s3cret-token"


def add_job_outputs(storage: Path) -> None:
    """What the jobs leave beside the tiny checkpoints: training histories (metrics.json) and
    an evaluation report on the served VAE, shaped as the jobs write them."""
    import json

    for kind in ("vae", "ddpm"):
        history = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1)} for e in range(4)]
        (storage / kind / "metrics.json").write_text(json.dumps({"history": history}))
    curve = {"untargeted": {str(e): {"accuracy": round(0.9 - 2 * e, 3)} for e in (0.0, 0.1, 0.2, 0.3)}}
    report = {"vae": {"checkpoint": str(storage / "vae" / "checkpoint.pt"),
                      "robustness": {m: {"fgsm": curve, "pgd": curve}
                                     for m in ("pixel_cnn", "latent_classifier",
                                               "reconstruct_then_classify")}}}
    (storage / "eval" / "web").mkdir(parents=True)
    (storage / "eval" / "web" / "report.json").write_text(json.dumps(report))


_serve_stop: list = []  # how to stop the test run's Serve, while it runs
_last_serve_test: list[str] = []  # the node id of the last test that uses it, once collected


@pytest.fixture(scope="session")
def serve_apps(tmp_path_factory):
    """Two apps on one Serve: ``/`` (no token) and ``/secured`` (token from an environment
    variable, short queues for the load test), over tiny checkpoints with job outputs beside
    them (``HW4_WEB_STORAGE=results`` serves the trained models instead, for screenshots).
    Started once for tests/test_serve.py and tests/test_web.py (which run one after the other)
    and stopped after the last test that uses it, not left running under the tests after it."""
    ray = pytest.importorskip("ray")
    from ray import serve

    from serve.app import build_app

    if os.environ.get("HW4_WEB_STORAGE"):
        storage = Path(os.environ["HW4_WEB_STORAGE"]).resolve()
    else:
        storage = make_storage(tmp_path_factory.mktemp("serve"))
        add_job_outputs(storage)

    def stop():
        serve.shutdown()
        ray.shutdown()
        os.environ.pop(SERVE_TOKEN_ENV, None)

    os.environ[SERVE_TOKEN_ENV] = SERVE_TOKEN  # before ray.init: the replicas inherit it
    ray.init(address="local", num_cpus=8, include_dashboard=False)
    _serve_stop.append(stop)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": SERVE_PORT})
        args = {"storage_path": str(storage)}
        serve.run(build_app(args), name="open", route_prefix="/")
        serve.run(build_app({**args, "token_env": SERVE_TOKEN_ENV, "max_queued_requests": "4"}),
                  name="secured", route_prefix="/secured")
        yield {"storage": storage, "args": args, "serve": serve, "build": build_app}
    finally:
        if _serve_stop:
            _serve_stop.pop()()


def pytest_runtest_teardown(item, nextitem):
    """Stop the test run's Serve after the last test that uses it (they run one after another)."""
    if _serve_stop and [item.nodeid] == _last_serve_test:
        _serve_stop.pop()()
