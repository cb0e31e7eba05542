"""The benchmark scripts run end to end in their tiny modes (no timing assertions)."""

import json
import subprocess
import sys

import pytest
import torch

from .conftest import ROOT, needs_data, write_ddpm


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
    assert set(result["path_ms"]) == {"direct", "handle", "http", "static"}
    assert all(ms > 0 for ms in result["path_ms"].values())
    stream = result["stream"]  # a streamed chain shows its first preview before it ends
    assert stream["first_preview_s"] > 0 and stream["first_preview_step"] < stream["total"]
    assert stream["next_request_s"] > 0


def test_sampler_speed_bench_runs_tiny(tmp_path):
    out = tmp_path / "speed.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "sampler_speed.py"), "--tiny",
                          "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["sampler"] for r in rows] == ["ddpm", "ddim:5"]
    assert rows[0]["speedup_vs_ddpm"] == 1.0 and all(r["median_s"] > 0 for r in rows)


def run_tiny(module: str, out, timeout: int = 300) -> dict:
    run = subprocess.run([sys.executable, "-m", f"bench.{module}", "--tiny", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "|---|" in run.stdout  # printed its Markdown table
    return json.loads(out.read_text())


def test_unet_speed_bench_runs_tiny(tmp_path):
    result = run_tiny("unet_speed", tmp_path / "unet.json")
    assert {r["phase"] for r in result["rows"]} == {"train", "infer"}
    ours, theirs = result["models"]["ours"]["params"], result["models"]["diffusers"]["params"]
    assert abs(ours - theirs) / ours < 0.2  # matched as closely as the tiny widths allow
    assert result["matmul_peak"]["flops_per_s"] > 0
    assert 0 < result["models"]["ours"]["fraction_of_matmul_peak"]


def test_samplers_bench_runs_tiny_and_matches_diffusers(tmp_path):
    result = run_tiny("samplers", tmp_path / "samplers.json")
    assert [r["sampler"] for r in result["rows"]] == ["DDIM-5", "DDIM-10", "DDPM-20"]
    assert result["cross_check_max_abs_diff"] < 1e-4  # our DDIM step = diffusers' on their steps


def test_memory_bench_runs_tiny(tmp_path):
    rows = run_tiny("memory", tmp_path / "memory.json")["rows"]
    assert [(r["mode"], r["batch"]) for r in rows] == [("train", 4), ("sample", 2)]
    assert all(r["peak_rss_mib"] >= r["baseline_rss_mib"] > 0 for r in rows)


@pytest.mark.ray
def test_ray_overhead_bench_runs_tiny(tmp_path):
    result = run_tiny("ray_overhead", tmp_path / "ray.json", timeout=600)
    assert result["plain_images_per_s"]["median"] > 0 and result["ray_images_per_s"]["median"] > 0
    assert result["cpu_seconds_during_fit"][0]  # the per-process CPU meter saw processes


def test_tables_are_regenerated_from_results(tmp_path):
    from bench import tables

    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text(f"# B\n\nbefore\n\n{tables.BEGIN}\nstale\n{tables.END}\n\nafter\n")
    run = subprocess.run([sys.executable, "-m", "bench.tables", "--file", str(doc)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    text = doc.read_text()
    assert "stale" not in text and "before" in text and "after" in text
    assert "### Samplers against diffusers' schedulers, same network" in text


def test_train_step_bench_runs_tiny(tmp_path):
    result = run_tiny("train_step", tmp_path / "step.json")
    rows = result["rows"]
    assert [r["variant"] for r in rows] == ["before", "after"]
    assert all(r["images_per_s"] > 0 and 0 < r["share_of_peak"] for r in rows)
    assert result["matmul_peaks"]["fp32"]["n"] in (128, 256)


def test_serve_limits_bench_runs_tiny(tmp_path):
    result = run_tiny("serve_limits", tmp_path / "limits.json")
    assert result["sample"]["seconds_per_image_call"] > 0
    assert result["attack"]["seconds_per_gradient_eval"] > 0
    assert result["sample"]["limit"] == 16_384


def test_soak_bench_kills_a_replica_and_counts_only_503s(tmp_path):
    """Half a minute of mixed traffic on tiny models, the DDPM replica killed mid-way: every 200
    equals the first answer to the same request, and no 5xx but 503 reaches a client."""
    result = run_tiny("soak", tmp_path / "soak.json", timeout=400)
    assert result["killed"] and "DDPMModel" in result["killed"]
    assert result["ddpm_back_after_s"] is not None  # a new replica answered after the kill
    assert result["healthz_503_after_s"] is not None  # and /healthz said it was down meanwhile
    assert result["wrong"] == 0 and result["other_5xx"] == 0 and result["errors"] == 0, result
    assert result["ok"] > 20 and {"ddpm guided", "vae sample", "adversarial"} <= set(result["by_route"])


def test_cpu_step_bench_runs_tiny(tmp_path):
    from bench import cpu_step

    result = run_tiny("cpu_step", tmp_path / "cpu.json")
    assert set(result["speed"]) == set(cpu_step.VARIANTS) and result["speed"]["fp32"]["speedup"] == 1.0
    # each round's ratios on its own medians: fp32 is 1 in every round, the others one per round
    assert all(v["rounds"] == 2 and len(v["speedup_per_round"]) == 2 for v in result["speed"].values())
    assert result["speed"]["fp32"]["speedup_per_round"] == [1.0, 1.0]
    assert [len(c["points"]) for c in result["curves"].values()] == [2, 2]


@needs_data
def test_sampling_bench_scores_every_variant_tiny(tmp_path):
    """bench/sampling.py on a tiny checkpoint: every variant scored by both judges, in a table."""
    from bench import sampling

    sampling.run(write_ddpm(tmp_path / "ddpm.pt"), tmp_path, n=20, threads=1)
    scores = json.loads((tmp_path / "sampling.json").read_text())["scores"]
    assert [s["variant"] for s in scores] == list(sampling.VARIANTS)
    assert all(0 <= s["background_share"] <= 1 and s["fid"] > 0 for s in scores)
    text = sampling.table(tmp_path)
    assert all(name in text for name in sampling.VARIANTS) and "MNIST test (the floor)" in text


@needs_data
def test_quality_curve_scores_each_saved_point_once_and_draws(tmp_path, monkeypatch):
    """bench/quality_curve.py on two tiny checkpoints: one row a point, in step order, a figure;
    a second call scores nothing again."""
    from bench import quality_curve, recipe

    for step in (4, 8):
        write_ddpm(tmp_path / f"step{step}-ramp.pt")
    (tmp_path / "log.json").write_text(json.dumps(
        [{"step": 8, "train_seconds": 120.0}, {"step": 4, "train_seconds": 60.0}]))
    rows = quality_curve.score(tmp_path, n=20, threads=1, figure=tmp_path / "curve.png")
    assert [(r["step"], r["train_minutes"]) for r in rows] == [(4, 1.0), (8, 2.0)]
    assert (tmp_path / "curve.png").stat().st_size > 0
    assert all(0 <= r["background_share"] <= 1 and r["second_fid"] > 0 for r in rows)
    calls = []
    monkeypatch.setattr(recipe, "score", lambda *a, **k: calls.append(a))
    quality_curve.score(tmp_path, n=20, threads=1, figure=tmp_path / "curve.png")
    assert calls == []
    assert quality_curve.table(tmp_path).count("\n") == 3  # header, rule, two points


def test_bench_draw_is_the_sample_every_command_draws_and_maps_the_data_range_back(tmp_path):
    """``bench.recipe.draw`` with its defaults is ``TrainedDDPM.sample`` pixel for pixel; a run
    trained in [-s, s] is mapped back by its scale (x / s), not read as if it were [-1, 1]."""
    from bench import recipe
    from hw4 import evaluation
    from hw4.trained import load_ddpm

    ddpm = load_ddpm(write_ddpm(tmp_path / "ddpm.pt"))
    labels = evaluation.balanced_labels(0, 10)
    ours = recipe.draw(ddpm, labels, 1.0, method="dpm++2m")
    assert torch.equal(ours, ddpm.sample(10, labels=labels, guidance=1.0))
    # an untrained network's samples run far outside [-1, 1]: wide ranges keep them inside
    wide, wider = (recipe.draw(ddpm, labels, 0.0, method="dpm++2m", data_scale=s) for s in (1e7, 2e7))
    assert ((wide > 0) & (wide < 1)).all()  # x = 2e7 * wide - 1e7, which maps to x / 4e7 + 1/2
    assert torch.allclose(wider, wide / 2 + 0.25, atol=1e-6)


@needs_data
def test_recipe_run_trains_on_the_data_range_asked(tmp_path, monkeypatch):
    """``train_in_process(data_scale=s)`` hands the step images in [-s, s], MNIST's background at
    exactly -s, and records s beside the run's log."""
    from bench import recipe
    from hw4 import train
    from jobs import cli, ddpm_config, train_ddpm

    seen, step = [], train.ddpm_train_step
    monkeypatch.setattr(train, "ddpm_train_step", lambda m, s, x, *a, **k: (seen.append(x), step(
        m, s, x, *a, **k))[1])
    cfg = cli.build(train_ddpm.DDPMJobConfig, {**ddpm_config.SMOKE, "conditional": True})
    recipe.train_in_process(cfg, 3, 0, tmp_path, 1, "scaled", [cfg.ema_warmup], points=1,
                            data_scale=0.5)
    assert len(seen) == 3 and all(x.min() == -0.5 and 0.45 < x.max() <= 0.5 for x in seen)
    assert json.loads((tmp_path / "log.json").read_text())[-1]["data_scale"] == 0.5
