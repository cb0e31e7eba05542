"""A node lost mid-run: a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``),
the node holding the DDPM job's training worker is removed mid-epoch, and the run resumes from
its last checkpoint on the other node with nothing lost and nothing repeated."""

import json
import threading
import time
from pathlib import Path

import pytest

from .conftest import needs_data

pytestmark = [pytest.mark.ray, needs_data]


def busy_node(ray, cpus: int) -> str | None:
    """The id of the worker node whose free CPUs dropped by ``cpus`` (the training worker's)."""
    from ray._private.state import available_resources_per_node

    total = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
    for node, free in available_resources_per_node().items():
        if node in total and total[node] - free.get("CPU", 0) >= cpus:
            return node
    return None


def test_a_lost_node_resumes_from_the_last_checkpoint_elsewhere(tmp_path):
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from jobs import train_ddpm
    from jobs.runs import latest_recorded_epoch

    # the head holds the driver and the controller; its GCS checks each node every 0.5 s and
    # takes three misses for a death (Ray's default: 3 s and five, about 11 s to notice the loss)
    health = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    # Ray's Cluster records its head in /tmp/ray/ray_current_cluster and deletes that file when it
    # shuts down, whoever wrote it: a user's `ray start` address is put back afterwards
    recorded = Path("/tmp/ray/ray_current_cluster")
    users = recorded.read_text() if recorded.is_file() else None
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "_system_config": health})
    nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]  # one training worker fits on each
    try:
        # its workers look for this cluster's state API through RAY_ADDRESS (Ray Train's cleaner
        # does), not among the other local Rays of the machine (tests/conftest.start_ray_head)
        ray.init(address=cluster.address, runtime_env={"env_vars": {"RAY_ADDRESS": cluster.address}})
        out: dict = {}
        args = ["--smoke-test", "--storage-path", str(tmp_path), "--name", "lost", "--epochs", "8",
                "--train-subset", "512", "--cpus-per-worker", "2", "--max-failures", "2"]
        job = threading.Thread(target=lambda: out.update(summary=train_ddpm.main(args)))
        job.start()
        run = tmp_path / "lost"
        deadline = time.time() + 240
        while latest_recorded_epoch(run) is None and time.time() < deadline:
            time.sleep(0.1)
        assert latest_recorded_epoch(run) is not None, "no checkpoint recorded before the deadline"
        victim = busy_node(ray, 2)
        assert victim is not None, "could not find the training worker's node"
        node = next(n for n in nodes if n.node_id == victim)
        cluster.remove_node(node, allow_graceful=False)
        job.join(timeout=300)
        assert not job.is_alive(), "the run did not finish after the node was lost"
        history = json.loads((run / "artifacts" / "metrics.json").read_text())["history"]
        assert [h["epoch"] for h in history] == list(range(8))  # nothing lost, nothing repeated
        assert max(h["resumed_from_epoch"] for h in history) > 0  # a restarted worker group
    finally:
        ray.shutdown()
        cluster.shutdown()
        if users is not None:
            recorded.write_text(users)
