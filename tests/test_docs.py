"""The documents a student reads: every image and relative link in README.md and docs/*.md
exists, and the homework figures' command runs (tiny mode: untrained models, a few images)."""

import re
from pathlib import Path

import pytest

from .conftest import ROOT, needs_data

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def documents() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", documents(), ids=lambda p: p.name)
def test_every_relative_link_and_image_exists(doc):
    missing = []
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        path = (doc.parent / target.split("#")[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert not missing, f"{doc.name} links to missing files: {missing}"


@needs_data
def test_homework_figures_command_runs_tiny(tmp_path):
    from hw4 import figures

    report = figures.main(["--tiny", "--out", str(tmp_path)])
    for name in ("ae_vae_reconstructions", "ae_vae_samples", "ae_vae_latent_pca", "ae_vae_interpolation",
                 "vae_traversal_by_kl", "forward_process", "reverse_process", "training_curves",
                 "small_eps_attacks"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG", name
    kl = report["kl_per_dim"]
    assert len(kl) == 4 and kl == sorted(kl, reverse=True)  # rows ordered by KL
    snr = report["forward"]["snr"]["linear"]
    assert snr == sorted(snr, reverse=True)  # the signal fades along the forward process
