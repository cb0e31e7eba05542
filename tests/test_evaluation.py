"""Evaluation: the loaders, the likelihood bounds, the robustness pieces and jobs/evaluate.py on
tiny checkpoints written here (no training, no Ray except where a test says so)."""

import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from hw4 import evaluation, samplers, vae_attacks
from hw4.checkpoint import CheckpointError
from hw4.models.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
)
from hw4.models.classifier import ClassifierConfig, ConvClassifier
from hw4.trained import Purified, load_ddpm, load_vae, resolve_checkpoint

from .conftest import ROOT, cli_in_process, make_storage, needs_data, write_vae


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return make_storage(tmp_path_factory.mktemp("storage"))


def test_loaders_rebuild_models_with_ema_weights_and_heads(storage):
    ddpm = load_ddpm(resolve_checkpoint(storage, "ddpm"))
    first = next(iter(ddpm.model.state_dict()))
    raw = torch.load(storage / "ddpm" / "checkpoint.pt", weights_only=True)
    assert torch.equal(ddpm.model.state_dict()[first], raw["ema"]["shadow"][first])
    assert ddpm.timesteps == 20 and ddpm.prediction == "eps"
    a, b = ddpm.sample(3, steps=4, seed=7), ddpm.sample(3, steps=4, seed=7)
    assert a.shape == (3, 1, 28, 28) and torch.equal(a, b) and 0 <= a.min() and a.max() <= 1
    vae = load_vae(resolve_checkpoint(storage, "vae"))
    assert vae.vae.config.variational and vae.probe is not None and vae.finetune is not None
    assert vae.probe(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_loaders_refuse_the_wrong_kind_and_missing_files(storage, tmp_path):
    with pytest.raises(CheckpointError, match="not a 'autoencoder'"):
        load_vae(storage / "ddpm" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(storage, "vae", tmp_path / "nope.pt")
    ae = load_vae(write_vae(tmp_path / "ae.pt", with_heads=False))
    assert ae.probe is None and ae.finetune is None


def test_iwae_is_non_decreasing_in_k_and_starts_at_the_elbo():
    torch.manual_seed(0)
    vae = Autoencoder(AutoencoderConfig(latent_dim=4, channels=8, hidden=32)).eval()
    first = vae.decoder.net[0]  # make the decoder depend strongly on z: a wide q-to-posterior gap
    with torch.no_grad():
        first.weight.mul_(20)
    x = (torch.rand(64, 1, 28, 28) > 0.7).float()
    out = evaluation.likelihood(vae, x, [1, 5, 50, 500], batch=32, chunk=64)
    bounds = [out["iwae"][k] for k in (1, 5, 50, 500)]
    assert bounds == sorted(bounds) and bounds[-1] > bounds[0] + 10
    assert out["elbo"] == pytest.approx(bounds[0], rel=0.03)  # both one-sample estimates
    assert out["elbo"] == pytest.approx(-(out["recon"] + out["kl"]))


def test_sampler_specs_parse_and_bad_ones_are_refused():
    assert samplers.SamplerSpec.parse("ddpm") == samplers.SamplerSpec("ddpm")
    assert samplers.SamplerSpec.parse("ddim:20:1") == samplers.SamplerSpec("ddim", 20, 1.0)
    for bad in ("ddim", "ddim:0", "ddim:x", "ddim:10:2", "ddpm:5", "euler:10"):
        with pytest.raises(Exception, match="bad sampler"):
            samplers.SamplerSpec.parse(bad)


def test_chunks_cover_n_with_distinct_seeds():
    parts = evaluation.chunks(250, 100, seed=3)
    assert [c for c, _ in parts] == [100, 100, 50] and len({s for _, s in parts}) == 3


def test_purifier_passes_gradients_and_reconstruction_attack_beats_noise():
    torch.manual_seed(0)
    vae = Autoencoder(AutoencoderConfig(latent_dim=4, channels=8, hidden=32)).eval()
    clf = ConvClassifier(ClassifierConfig(dropout=0.0)).eval()
    x = torch.rand(8, 1, 28, 28, requires_grad=True)
    Purified(vae, clf)(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    out = vae_attacks.reconstruction_under_attack(vae, x.detach(), [0.0, 0.1], ["fgsm"])
    assert out["fgsm"][0.0] == pytest.approx(out["random_sign_noise"][0.0])
    assert out["fgsm"][0.1] > out["random_sign_noise"][0.1]


def test_most_robust_uses_the_area_under_the_curve():
    def curve(*acc):
        return {"fgsm": {"untargeted": {e: {"accuracy": a} for e, a in zip((0, .1, .2), acc, strict=True)}}}
    best, area = vae_attacks.most_robust({"a": curve(.9, .2, .0), "b": curve(.8, .6, .3)}, "fgsm")
    assert best == "b" and area == pytest.approx(0.1 * (.8 + .6) / 2 + 0.1 * (.6 + .3) / 2)


def evaluate(*args, **kw):
    cmd = [sys.executable, str(ROOT / "jobs" / "evaluate.py"), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, **kw)


@needs_data
def test_evaluate_writes_the_report_folder(storage):
    out = evaluate("--smoke-test", "--num-workers", "0", "--storage-path", str(storage),
                   "--name", "inproc")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    folder = storage / "eval" / "inproc"
    report = json.loads((folder / "report.json").read_text())
    samplers = report["ddpm"]["samplers"]  # the tiny DDPM is conditional: sampler x guidance
    assert [(r["sampler"], r["guidance"]) for r in samplers] == [
        ("ddim:4", 0.0), ("ddim:4", 2.0), ("ddim:4:1", 0.0), ("ddim:4:1", 2.0)]
    assert all(r["fid"] > 0 and r["n"] == 24 for r in samplers) and report["ddpm"]["data_floor_fid"] > 0
    assert all(0 <= r["class_accuracy"] <= 1 for r in samplers) and report["ddpm"]["conditional"]
    # the second judge and the background share beside each row, MNIST's own figures as floors
    assert all(r["second_fid"] > 0 and 0 <= r["agreement"] <= 1 and 0 <= r["background_share"] <= 1
               and 0 <= r["second_class_accuracy"] <= 1 for r in samplers)
    floors = report["ddpm"]["floors"]
    assert floors["second_fid"] > 0 and 0 <= floors["background_share"] < 0.5
    vae = report["vae"]
    assert set(vae["likelihood"]["iwae"]) == {"1", "5", "20"}
    curves = vae["robustness"]
    assert set(curves) == {"pixel_cnn", "latent_classifier", "reconstruct_then_classify"}
    for c in curves.values():
        for attack in ("fgsm", "pgd"):
            assert set(c[attack]) == {"untargeted", "targeted"}
            assert "target_rate" in c[attack]["targeted"]["0.3"]
    assert vae["most_robust"]["pgd"][0] in curves
    for png in ("robustness.png", "reconstruction_attack.png", "adversarial_examples.png",
                "samples_ddim_4_w0.png", "samples_ddim_4_1_w2.png", "guidance_tradeoff.png",
                "vae_samples.png"):
        with Image.open(folder / png) as im:
            assert im.format == "PNG"
    assert "| DDIM-4 eta=0 | 2 | 4 |" in (folder / "report.md").read_text()
    assert list((storage / "eval" / "fid_stats").glob("mnist-train-24-*.pt"))  # cached


@needs_data
@pytest.mark.ray
def test_ray_sampling_gives_the_same_images_as_in_process(storage):
    """Two Ray tasks at a time draw the chunks; the grid matches the in-process one exactly."""
    args = ("--smoke-test", "--models", "ddpm", "--samplers", "ddim:4", "--guidance", "2",
            "--storage-path", str(storage))
    local = evaluate(*args, "--num-workers", "0", "--cpus-per-worker", "1", "--name", "w0")
    spread = evaluate(*args, "--num-workers", "2", "--cpus-per-worker", "1", "--name", "w2")
    assert local.returncode == 0 and spread.returncode == 0, spread.stderr[-3000:]
    grids = [(storage / "eval" / n / "samples_ddim_4_w2.png").read_bytes() for n in ("w0", "w2")]
    assert grids[0] == grids[1]
    reports = [json.loads((storage / "eval" / n / "report.json").read_text()) for n in ("w0", "w2")]
    # the same images; the FID's float sums may run on another number of threads in each
    a, b = (r["ddpm"]["samplers"][0] for r in reports)
    assert a["fid"] == pytest.approx(b["fid"], rel=1e-6)
    assert a["second_fid"] == pytest.approx(b["second_fid"], rel=1e-6)


@pytest.mark.parametrize("args, message", [
    (["--samplers", "ddim:0"], "bad sampler"),
    (["--epsilons", "0", "2"], "--epsilons must lie in [0, 1]"),
    (["--models", "gan"], "--models must be vae and/or ddpm"),
    (["--attacks", "cw"], "--attacks must be among"),
])
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path, capsys):
    from jobs import evaluate as job

    code, err = cli_in_process(job.main, [*args, "--storage-path", str(tmp_path)], capsys)
    assert code == 2 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_registry_is_a_clear_error(tmp_path, capsys):
    from jobs import evaluate as job

    code, err = cli_in_process(job.main, ["--models", "ddpm", "--storage-path", str(tmp_path)], capsys)
    assert code == 2 and "no registered ddpm checkpoint" in err
