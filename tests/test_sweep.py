"""The sweep's decisions as pure functions (no Ray started): how many trials fit, what a trial
reports to Tune, how trials are ranked, and the search space each search algorithm gets."""

import math

import pytest
from ray import tune

from hw4.errors import HW4Error
from jobs import sweep, sweep_results, sweep_search


@pytest.mark.parametrize("cpus, gpus, workers, use_gpu, concurrent, cpw, expect", [
    (2, 0, 1, False, None, None, (2, 0.9)),     # this machine: two trials, 0.9 CPU each
    (2, 0, 1, False, 1, None, (1, 1.9)),        # one trial gets all but its actor's 0.1
    (16, 0, 2, False, None, None, (8, 0.95)),   # 8 trials of 2 workers
    (16, 0, 2, False, None, 3.0, (2, 3.0)),     # 3 CPUs a worker: 2 x (6 + 0.1) fit in 16
    (32, 4, 2, True, None, None, (2, 7.95)),    # one GPU a worker: 2 trials on 4 GPUs
    (1, 0, 4, False, None, None, (1, 0.22)),    # does not fit whole: one trial, CPUs shared
])
def test_plan_resources_runs_as_many_trials_as_fit(cpus, gpus, workers, use_gpu, concurrent, cpw,
                                                  expect):
    got = sweep.plan_resources(cpus, gpus, num_workers=workers, use_gpu=use_gpu,
                               max_concurrent=concurrent, cpus_per_worker=cpw)
    assert got == expect
    n, per_worker = got
    assert n * (workers * per_worker + sweep.TRIAL_CPU) <= cpus + 1e-9  # they fit in the cluster


def test_plan_resources_refuses_more_trials_than_cpus_can_hold():
    with pytest.raises(HW4Error, match="lower --max-concurrent"):
        sweep.plan_resources(2, 0, num_workers=1, use_gpu=False, max_concurrent=20,
                             cpus_per_worker=None)


def test_a_diverged_trial_reports_the_worst_metric_and_the_epochs_it_trained():
    out = sweep.trial_metrics({"epoch": 0, "val_elbo": float("nan")}, "val_elbo", "max")
    assert out["val_elbo"] == -math.inf and out["diverged"] and out["epochs_done"] == 1
    out = sweep.trial_metrics({"epoch": 3, "fid": float("inf")}, "fid", "min")
    assert out["fid"] == math.inf and out["diverged"]
    out = sweep.trial_metrics({"epoch": 2, "fid": 12.5}, "fid", "min")
    assert out == {"epoch": 2, "fid": 12.5, "epochs_done": 3}


def test_rank_orders_finished_trials_and_leaves_the_others_unranked():
    rows = [{"fid": 30.0, "status": "done"}, {"fid": 10.0, "status": "stopped"},
            {"fid": 20.0, "status": "done"}, {"fid": None, "status": "error"}]
    ranked = sweep_results.rank(rows, "fid", "min")
    assert [(r["rank"], r["fid"], r["status"]) for r in ranked] == [
        (1, 20.0, "done"), (2, 30.0, "done"), (None, 10.0, "stopped"), (None, None, "error")]
    assert list(ranked[0]) == ["rank", "fid", "status"]
    assert [r["fid"] for r in sweep_results.rank(rows, "fid", "max")][:2] == [30.0, 20.0]


def test_search_space_per_algorithm():
    grid = sweep_search.search_space("grid", {"beta": (0.5, 4.0), "latent_dim": (16,)}, {})
    assert grid["beta"] == tune.grid_search([0.5, 4.0]) and grid["latent_dim"] == 16
    drawn = sweep_search.search_space("optuna", {"schedule": ("linear", "cosine")},
                               {"beta": (0.1, 10.0), "p": (0.0, 0.5)}, log=("beta",))
    assert drawn["schedule"].categories == ["linear", "cosine"]
    assert (drawn["beta"].lower, drawn["beta"].upper) == (0.1, 10.0)
    assert type(drawn["beta"].sampler).__name__ == "_LogUniform"
    assert type(drawn["p"].sampler).__name__ == "_Uniform"
    with pytest.raises(HW4Error, match="a range needs --search random or optuna"):
        sweep_search.search_space("grid", {}, {"beta": (0.1, 10.0)})


@pytest.mark.parametrize("num_samples, startup", [(1, 2), (8, 2), (20, 5), (100, 10)])
def test_tpe_models_the_results_after_a_quarter_of_the_trials(num_samples, startup):
    assert sweep_search.startup_trials(num_samples) == startup
