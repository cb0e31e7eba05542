"""How a sweep's trials are drawn: Tune's parameter space from the values and ranges to try,
and the search algorithm (a grid, seeded random draws, or Optuna's TPE), each holding back new
trials while ``max_concurrent`` run."""

from __future__ import annotations

from typing import Any

from ray import tune

from jobs.cli import check


def search_space(search: str, choices: dict[str, tuple], ranges: dict[str, tuple[float, float]],
                 log: tuple[str, ...] = ()) -> dict:
    """Tune's param_space. ``choices``: values to try (a grid, or a categorical draw);
    ``ranges``: LOW HIGH of a continuous parameter (log-uniform when named in ``log``), which
    only random and Optuna searches draw from. A single choice is a constant."""
    space: dict[str, Any] = {}
    for key, values in choices.items():
        values = list(values)
        space[key] = (values[0] if len(values) == 1 else
                      tune.grid_search(values) if search == "grid" else tune.choice(values))
    for key, (lo, hi) in ranges.items():
        check(search != "grid", f"{key}: a range needs --search random or optuna")
        space[key] = tune.loguniform(lo, hi) if key in log else tune.uniform(lo, hi)
    return space


def startup_trials(num_samples: int) -> int:
    """Random draws before TPE models the results: Optuna's default is 10, which a sweep of 8
    trials would never get past (it would be a random search); a quarter of the trials, 2 to 10."""
    return max(2, min(10, num_samples // 4))


def searcher(search: str, *, metric: str, mode: str, seed: int, max_concurrent: int,
             num_samples: int) -> Any:
    """The search algorithm: Tune's variant generator (grid or seeded random), or Optuna's TPE,
    either holding back new trials while ``max_concurrent`` run (Tune's own
    ``max_concurrent_trials`` is not applied to a variant generator passed in)."""
    if search == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        tpe = TPESampler(seed=seed, n_startup_trials=startup_trials(num_samples))
        return ConcurrencyLimiter(OptunaSearch(metric=metric, mode=mode, sampler=tpe),
                                  max_concurrent=max_concurrent)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent)
