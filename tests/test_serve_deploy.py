"""`serve deploy serve/config.yaml` on a local head: a changed checkpoint reloads in place while
requests keep succeeding, and a corrupt one is reported while the previous model keeps serving."""

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
import yaml

from hw4.registry import file_digest

from .conftest import ROOT, make_storage, poll_until, start_ray_head, stop_ray_head

pytestmark = [pytest.mark.ray]

GCS_PORT, DASHBOARD_PORT, HTTP_PORT = 6391, 8276, 8312
URL = f"http://127.0.0.1:{HTTP_PORT}"
TOKEN = "deploy-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def deploy(config: dict, path: Path, env: dict) -> None:
    path.write_text(yaml.safe_dump(config))
    serve = shutil.which("serve", path=str(Path(sys.executable).parent))
    out = subprocess.run([serve, "deploy", str(path), "-a", f"http://127.0.0.1:{DASHBOARD_PORT}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def wait_for(predicate, timeout: float = 180.0):
    value = poll_until(predicate, timeout, every=1.0)
    if not value:
        raise AssertionError(f"condition not met within {timeout}s")
    return value


def ddpm_info() -> dict:
    return requests.get(URL + "/info", headers=AUTH, timeout=30).json()["ddpm"]


def test_serve_deploy_reloads_checkpoints_in_place(tmp_path):
    storage = make_storage(tmp_path / "storage")
    second = tmp_path / "second.pt"
    shutil.copyfile(storage / "ddpm" / "checkpoint.pt", second)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00not a checkpoint")

    config = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    config["http_options"]["port"] = HTTP_PORT
    app = config["applications"][0]
    assert app["args"]["token_env"] == "HW4_SERVE_TOKEN"  # the shipped config requires a token
    app["runtime_env"] = {"env_vars": {"HW4_SERVE_TOKEN": TOKEN}}
    deployments = {d["name"]: d for d in app["deployments"]}
    deployments["DDPMModel"].pop("autoscaling_config")
    deployments["DDPMModel"].update(num_replicas=1, ray_actor_options={"num_cpus": 1})
    app["args"]["storage_path"] = str(storage)  # the builder pins the registry's best

    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {**os.environ, "RAY_AUTH_MODE": "token", "PATH": path}
    start_ray_head(GCS_PORT, DASHBOARD_PORT, num_cpus=4, env=env)
    try:
        deploy(config, tmp_path / "serve.yaml", env)
        first = wait_for(lambda: ddpm_info()["loaded"] and ddpm_info())
        assert first["checkpoint"] == f"ddpm-{first['sha256'][:12]}"  # pinned by content
        body = {"n": 1, "steps": 3}

        codes: list[int] = []
        stop = threading.Event()

        def load() -> None:  # keeps requests flowing during the reload
            while not stop.is_set():
                codes.append(requests.post(URL + "/ddpm/sample", json=body, headers=AUTH,
                                           timeout=60).status_code)

        worker = threading.Thread(target=load)
        worker.start()
        try:
            # a checkpoint named in the user_config with the hash it must have: reloaded in place
            deployments["DDPMModel"]["user_config"] = {"storage_path": str(storage),
                                                       "checkpoint": str(second),
                                                       "sha256": file_digest(second)}
            deploy(config, tmp_path / "serve.yaml", env)
            reloaded = wait_for(lambda: ddpm_info()["run"] == second.name and ddpm_info())
        finally:
            stop.set()
            worker.join()
        assert reloaded["replica"] == first["replica"], "the replica was restarted, not reconfigured"
        assert codes and set(codes) == {200}, codes

        deployments["DDPMModel"]["user_config"].update(checkpoint=str(corrupt), sha256=file_digest(corrupt))
        deploy(config, tmp_path / "serve.yaml", env)
        failed = wait_for(lambda: ddpm_info()["load_error"] and ddpm_info())
        assert "not a readable checkpoint" in failed["load_error"]
        assert failed["run"] == second.name and failed["replica"] == first["replica"]
        assert requests.post(URL + "/ddpm/sample", json=body, headers=AUTH, timeout=60).status_code == 200
        assert requests.post(URL + "/ddpm/sample", json=body, timeout=60).status_code == 401
    finally:
        stop_ray_head(GCS_PORT)
