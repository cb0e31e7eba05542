"""The attacks of the field's standard (hw4/adversarial/): APGD's step-size schedule, the
ensemble's per-image minimum, EOT against a random defence, gradients through diffusion
purification, and agreement with torchattacks, a reference no one here wrote."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hw4 import adversarial as A
from hw4.adversarial import apgd as apgd_module
from hw4.adversarial.registry import ATTACKS, AttackOptions, AttackSpec

from .conftest import needs_data

EPS = 0.2


class Barrier(nn.Module):
    """Two classes decided by s = mean(x - 0.5) / eps along one direction: the margin of class 0
    falls until |s| = 0.3, rises again until 0.6 (a local maximum of the loss traps a small fixed
    step), then falls below zero before the ball's surface (|s| > 0.85: misclassified)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = ((x - 0.5).flatten(1).mean(1) / EPS).abs()
        m = 2 - 3 * r + 6 * F.relu(r - 0.3) - 11 * F.relu(r - 0.6)  # the margin of class 0
        return torch.stack([m / 2, -m / 2], 1)


def test_apgd_beats_pgd_at_equal_steps_where_a_fixed_step_is_trapped():
    """PGD's fixed step (2.5 eps / steps) climbs to the first local maximum of the loss and
    oscillates there; APGD's first step of 2 eps reaches the surface, and its checkpoints only
    shrink the step where the loss stalls."""
    x = torch.full((16, 1, 28, 28), 0.5)
    y = torch.zeros(16, dtype=torch.long)
    model = Barrier()
    assert A.accuracy(model, x, y) == 1.0
    g = torch.Generator().manual_seed(0)
    after_pgd = A.accuracy(model, A.pgd(model, x, y, EPS, steps=10, generator=g), y)
    after_apgd = A.accuracy(model, apgd_module.apgd(model, x, y, EPS, steps=10, generator=g), y)
    assert after_pgd == 1.0 and after_apgd == 0.0


def test_the_checkpoints_follow_the_paper():
    assert apgd_module.checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_module.checkpoints(10) == [3, 5, 6, 7, 8, 9, 10]


def test_dlr_is_invariant_to_shifting_and_scaling_the_logits():
    from hw4.adversarial.gradients import dlr, dlr_targeted

    z = torch.randn(8, 10)
    y, t = torch.randint(0, 10, (8,)), torch.randint(0, 10, (8,))
    assert torch.allclose(dlr(z, y), dlr(7 * z + 3, y), atol=1e-5)
    assert torch.allclose(dlr_targeted(t)(z, y), dlr_targeted(t)(7 * z + 3, y), atol=1e-5)


def deterministic(name, run):
    return AttackSpec(name, name, 0, run, lambda steps, o: 1)


@needs_data
def test_the_ensemble_is_per_image_the_minimum_of_its_attacks(monkeypatch):
    """An image is robust under the ensemble exactly when every member failed on it (members here
    are deterministic per image, so each can be run alone on all images and compared)."""
    from hw4 import data
    from hw4.assets import load_classifier

    model = load_classifier("mnist")
    x, y = (t[:96] for t in data.load_tensors("mnist", "test"))
    members = {
        "fgsm-only": deterministic("fgsm-only", lambda m, x, y, e, tg, o, g: A.fgsm(m, x, y, e)),
        "pgd-fixed": deterministic("pgd-fixed", lambda m, x, y, e, tg, o, g: A.pgd(
            m, x, y, e, steps=5, random_start=False)),
    }
    monkeypatch.setattr("hw4.adversarial.ensemble.ATTACKS", {**ATTACKS, **members})
    alone = {name: (model(spec.run(model, x, y, 0.1, False, AttackOptions(), None)).argmax(1) == y)
             for name, spec in members.items()}
    trace = {}
    adv = A.autoattack(model, x, y, 0.1, attacks=tuple(members), trace=trace)
    robust = model(adv).argmax(1) == y
    assert torch.equal(robust, alone["fgsm-only"] & alone["pgd-fixed"])
    assert torch.equal(trace["pgd-fixed"], robust) and torch.equal(trace["fgsm-only"], alone["fgsm-only"])
    assert 0 < int(robust.sum()) < len(y)  # both outcomes occur: the test can tell them apart


class GradientNoise(nn.Module):
    """A 'defence' whose forward is the model's and whose gradient is that plus loud random
    noise (a straight-through term): one gradient points nowhere. The noise comes in antithetic
    pairs (a fresh draw, then its negative), so the mean over an even number of calls is the
    model's own gradient, and the test needs no luck."""

    def __init__(self, model: nn.Module, loudness: float, seed: int = 0) -> None:
        super().__init__()
        self.model, self.loudness = model, loudness
        self.generator = torch.Generator().manual_seed(seed)
        self.last: torch.Tensor | None = None

    def draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.last is not None and self.last.shape == shape:
            r, self.last = -self.last, None
            return r
        self.last = torch.randn(shape, generator=self.generator)
        return self.last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)  # (N, K)
        r = self.draw((x.shape[0], logits.shape[1], x[0].numel()))
        zero = (x - x.detach()).flatten(1)  # value 0, gradient 1
        return logits + self.loudness * torch.einsum("nd,nkd->nk", zero, r)  # a random direction per class


@needs_data
def test_eot_averages_the_defences_noise():
    from hw4 import data
    from hw4.assets import load_classifier

    model = load_classifier("mnist")
    x, y = (t[:64] for t in data.load_tensors("mnist", "test"))
    noisy = GradientNoise(model, loudness=10.0)
    opts = dict(steps=10, generator=torch.Generator().manual_seed(0))
    plain = A.accuracy(model, A.pgd(model, x, y, 0.15, **opts), y)
    one = A.accuracy(model, A.pgd(noisy, x, y, 0.15, **opts), y)
    averaged = A.accuracy(model, A.pgd(noisy, x, y, 0.15, eot=2, **opts), y)
    assert one > plain + 0.3  # the noise hides the model from a one-sample gradient
    assert averaged < one - 0.3 and abs(averaged - plain) <= 2 / 64  # EOT sees through it


@needs_data
@pytest.mark.parametrize("eps", [0.2])
def test_apgd_and_the_ensemble_agree_with_torchattacks(eps):
    """Ours against torchattacks at the same budget (its defaults: 10 steps, 9 targets, Square
    with 5,000 queries; its AutoAttack also runs FAB-T), on the pinned MNIST CNN."""
    torchattacks = pytest.importorskip("torchattacks")  # installed by `make install`
    from hw4 import data
    from hw4.assets import load_classifier

    model = load_classifier("mnist")
    x, y = (t[:64] for t in data.load_tensors("mnist", "test"))
    g = torch.Generator().manual_seed(0)
    ours = A.robustness_curve(model, x, y, [eps], "apgd-ce", steps=10, generator=g)[eps]["accuracy"]
    theirs = A.accuracy(model, torchattacks.APGD(model, eps=eps, steps=10, seed=0)(x, y), y)
    assert abs(ours - theirs) <= 1 / 64  # at most one image of the 64
    ours = A.robustness_curve(model, x, y, [eps], "autoattack", steps=10,
                              generator=g)[eps]["accuracy"]
    theirs = A.accuracy(model, torchattacks.AutoAttack(model, eps=eps, seed=0)(x, y), y)
    assert abs(ours - theirs) <= 1 / 64
    assert ours <= A.robustness_curve(model, x, y, [eps], "pgd", generator=g)[eps]["accuracy"]
