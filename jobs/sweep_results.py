"""The end of a sweep: one row per trial (parameters, metrics, status, attempts), ranked, written
as results.csv and results.md with a plot of every trial's curve, and the best finished trial
registered."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from ray import tune

from hw4 import viz
from hw4.atomic_files import write_bytes_atomic, write_json_atomic
from jobs import finish
from jobs.sweep import ATTEMPTS_FILE, SweepOptions, trial_dir


def trial_rows(grid: tune.ResultGrid, params: list[str], metrics: list[str],
               opts: SweepOptions) -> list[dict]:
    """One row per trial: its parameters, its last reported metrics, how far it got (the epochs
    it reported; ``stopped`` when the scheduler cut it short), its restarts after crashes, and
    its artifact if it finished. Finished trials are ranked by the sweep's metric first."""
    rows = []
    for r in grid:
        m = r.metrics or {}
        trial_id = m.get("trial_id")  # absent only for a trial that failed before any report
        run = trial_dir(opts.storage_path, opts.name, str(trial_id))
        artifact = run / "artifacts" / "checkpoint.pt"
        attempts = (run / ATTEMPTS_FILE).read_text().count("start") if (
            run / ATTEMPTS_FILE).is_file() else 1
        status = "error" if r.error else ("done" if artifact.is_file() else "stopped")
        rows.append({**{p: r.config.get(p) for p in params},
                     **{k: m.get(k) for k in metrics},
                     "status": status, "epochs": m.get("epochs_done"),
                     "restarts": attempts - 1, "diverged": bool(m.get("diverged")),
                     "trial_id": trial_id,
                     "checkpoint": str(artifact) if artifact.is_file() else None})
    return rows


def rank(rows: list[dict], metric: str, mode: Literal["min", "max"]) -> list[dict]:
    """Finished trials first, best first, with their rank; then stopped and failed trials (not
    ranked: they were not trained as far)."""
    done = [r for r in rows if r["status"] == "done" and r.get(metric) is not None]
    done.sort(key=lambda r: r[metric], reverse=mode == "max")
    for i, r in enumerate(done):
        r["rank"] = i + 1
    rest = [r for r in rows if r not in done]
    for r in rest:
        r["rank"] = None
    return [{"rank": r.pop("rank"), **r} for r in done + rest]


def write_tables(rows: list[dict], out: Path) -> None:
    """results.csv and results.md (numbers to 4 significant digits in the Markdown)."""
    cols = [c for c in rows[0] if c != "checkpoint"] if rows else []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else [])
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(out / "results.csv", buf.getvalue().encode())

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in cols) + " |" for r in rows]
    write_bytes_atomic(out / "results.md", ("\n".join(lines) + "\n").encode())


def plot_trials(grid: tune.ResultGrid, rows: list[dict], *, metric: str, label: Callable[[dict], str],
                path: Path, title: str) -> None:
    """The metric after every epoch of every trial (every report, stopped trials included):
    finished trials solid, stopped ones dashed and ending in a cross."""
    status = {str(r["trial_id"]): r["status"] for r in rows}
    curves = []
    for r in grid:
        df = r.metrics_dataframe
        if df is None or metric not in df or "epochs_done" not in df:
            continue
        df = df.dropna(subset=[metric])
        trial_id = str(df["trial_id"].iloc[-1]) if len(df) else ""
        curves.append((label(r.config), df["epochs_done"].tolist(), df[metric].tolist(),
                       status.get(trial_id, "stopped")))
    viz.trial_curves(curves, path, xlabel="epochs trained", ylabel=metric, title=title)


def register_best(rows: list[dict], *, family: str, metric: str, mode: Literal["min", "max"],
                  opts: SweepOptions, out: Path) -> dict | None:
    """Write the best finished trial (by ``metric``) to ``best.json`` and offer it to the
    registry, which takes it when it beats the entry by the same metric (or ``--promote``)."""
    done = [r for r in rows if r["checkpoint"] and r.get(metric) is not None]
    if not done:
        print("no finished trial has a checkpoint; nothing registered")
        return None
    best = (min if mode == "min" else max)(done, key=lambda r: r[metric])
    best["registered"] = finish.should_register(opts) and finish.register_checkpoint(
        opts.storage_path, family, checkpoint=best["checkpoint"], metric=metric, value=best[metric],
        mode=mode, config=best, source=str(Path(opts.storage_path) / opts.name), promote=opts.promote)
    write_json_atomic(out / "best.json", best)
    print(json.dumps({"best": best}, indent=2, default=str))
    return best


def summarize(rows: list[dict]) -> str:
    stopped = [r for r in rows if r["status"] == "stopped"]
    at = ", ".join(str(r["epochs"]) for r in stopped)
    return (f"{len(rows)} trials: {sum(r['status'] == 'done' for r in rows)} finished, "
            f"{len(stopped)} stopped early" + (f" (after epochs {at})" if stopped else "") +
            f", {sum(r['status'] == 'error' for r in rows)} failed, "
            f"{sum(r['restarts'] for r in rows)} restart(s) after crashes")
