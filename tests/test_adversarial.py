import pytest
import torch
import torch.nn.functional as F

from hw4 import adversarial as A
from hw4.adversarial.registry import AttackOptions
from hw4.models.classifier import ClassifierConfig, ConvClassifier


@pytest.fixture(scope="module")
def trained():
    """A CNN fit to a fixed random batch, so that it is confident and attackable."""
    torch.manual_seed(0)
    x = torch.rand(64, 1, 28, 28)
    y = torch.arange(64) % 10
    model = ConvClassifier(ClassifierConfig(dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(80):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


QUICK = AttackOptions(steps=3, targets=2, queries=30)  # every attack of the registry, briefly


def run(attack, model, x, y, eps, targeted=False):
    return A.ATTACKS[attack].run(model, x, y, eps, targeted, QUICK, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("attack", list(A.ATTACKS))
def test_perturbation_within_eps_and_range(trained, attack):
    model, x, y = trained
    for eps in (0.01, 0.1, 0.3):
        adv = run(attack, model, x, y, eps)
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
    assert run(attack, model, x, (y + 1) % 10, 0.3, targeted=True).shape == x.shape


@pytest.mark.parametrize("attack", list(A.ATTACKS))
def test_eps_zero_changes_nothing(trained, attack):
    model, x, y = trained
    assert torch.equal(run(attack, model, x, y, 0.0), x)


def test_fgsm_raises_the_loss(trained):
    model, x, y = trained
    with torch.no_grad():
        clean = F.cross_entropy(model(x), y)
        adv = F.cross_entropy(model(A.fgsm(model, x, y, 0.05)), y)
    assert adv > clean


def test_pgd_is_at_least_as_strong_as_fgsm(trained):
    model, x, y = trained
    for eps in (0.02, 0.05, 0.1):
        f = A.accuracy(model, A.fgsm(model, x, y, eps), y)
        p = A.accuracy(model, A.pgd(model, x, y, eps, generator=torch.Generator().manual_seed(0)), y)
        assert p <= f


def test_targeted_attack_moves_towards_the_target(trained):
    model, x, y = trained
    target = (y + 1) % 10
    adv = A.pgd(model, x, target, 0.1, targeted=True, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = (model(x).argmax(1) == target).float().mean()
        after = (model(adv).argmax(1) == target).float().mean()
    assert after > before + 0.3


def test_robustness_curve_is_monotone_and_starts_at_clean_accuracy(trained):
    model, x, y = trained
    seen = {}
    curve = A.robustness_curve(model, x, y, [0.0, 0.05, 0.1, 0.2], "fgsm", batch=32,
                               on_adversarial=lambda e, a: seen.setdefault(e, a.shape))
    assert curve[0.0]["accuracy"] == A.accuracy(model, x, y)
    vals = [c["accuracy"] for c in curve.values()]
    assert vals == sorted(vals, reverse=True) and vals[-1] < vals[0]
    assert seen[0.1] == (32, 1, 28, 28)


def test_targeted_curve_reports_the_target_rate(trained):
    model, x, y = trained
    curve = A.robustness_curve(model, x, y, [0.0, 0.1], "pgd", targets=(y + 1) % 10, steps=10,
                               generator=torch.Generator().manual_seed(0))
    assert curve[0.1]["target_rate"] > curve[0.0]["target_rate"] + 0.3
    assert curve[0.1]["accuracy"] < curve[0.0]["accuracy"]


def test_reconstruction_attack_raises_the_reconstruction_error():
    """FGSM with an MSE loss against y = the clean images attacks a reconstruction model."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 8), torch.nn.Tanh(),
                              torch.nn.Linear(8, 784), torch.nn.Sigmoid(),
                              torch.nn.Unflatten(1, (1, 28, 28)))
    x = torch.rand(16, 1, 28, 28)
    adv = A.fgsm(net, x, x, 0.1, loss_fn=F.mse_loss)
    with torch.no_grad():
        assert F.mse_loss(net(adv), x) > F.mse_loss(net(x), x)
    assert (adv - x).abs().max() <= 0.1 + 1e-6
