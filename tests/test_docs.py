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


CITED_TEST = re.compile(r"tests/(\w+\.py)::(\w+)")


@pytest.mark.parametrize("doc", documents(), ids=lambda p: p.name)
def test_every_cited_test_exists(doc):
    """A ``tests/file.py::name`` in a document names a test function defined in that file."""
    missing = [f"{file}::{name}" for file, name in CITED_TEST.findall(doc.read_text())
               if not (ROOT / "tests" / file).is_file()
               or not re.search(rf"^def {name}\(", (ROOT / "tests" / file).read_text(), re.M)]
    assert not missing, f"{doc.name} cites tests that do not exist: {missing}"


def outside_code(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside fenced blocks (```...```)."""
    lines, fenced = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append((i, line))
    return lines


@pytest.mark.parametrize("doc", documents(), ids=lambda p: p.name)
def test_display_math_is_in_fenced_math_blocks(doc):
    """GitHub's Markdown can eat ``\\,`` ``\\|`` ... as escapes before MathJax sees them: display
    math goes in fenced ```math blocks (their contents reach MathJax untouched), and inline
    ``$...$`` holds no backslash-punctuation."""
    bad = []
    for i, line in outside_code(doc.read_text()):
        if "$$" in line or re.search(r"\$[^$]*\\[,;:!|{}][^$]*\$", line):
            bad.append(f"line {i}: {line.strip()[:60]}")
    assert not bad, f"{doc.name}: math outside fenced math blocks: {bad}"
