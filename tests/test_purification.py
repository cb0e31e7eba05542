"""Diffusion purification as a defence (hw4/purification.py): the full gradient reaches the input
through every solver step, BPDA's forward is the defence's own, and the noise is seeded."""

import pytest
import torch

from hw4 import adversarial as A
from hw4 import purification as P
from hw4.trained import load_ddpm

from .conftest import write_ddpm


class Classifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(784, 10)

    def forward(self, x):
        return self.lin(x.flatten(1))


def defence(tmp_path, steps=3, solver="ddim", seed=0):
    torch.manual_seed(0)  # the same tiny DDPM and classifier at every call
    ddpm = load_ddpm(write_ddpm(tmp_path / "d.pt"))  # T = 20
    return P.PurifiedClassifier(ddpm, Classifier(), t_star=10, steps=steps, solver=solver, seed=seed)


def spy_on_network(d):
    """Every network output of a forward pass, each with a hook that records its gradient."""
    outputs, reached = [], []
    net = d.ddpm.model
    inner = net.forward

    def forward(x, t, y=None):
        out = inner(x, t, y)
        if out.requires_grad:
            index = len(outputs)
            out.register_hook(lambda g: reached.append((index, float(g.abs().sum()))))
        outputs.append(out)
        return out

    net.forward = forward
    return outputs, reached


@pytest.mark.parametrize("solver", ["ddim", "dpm++2m"])
def test_the_gradient_flows_through_every_solver_step(tmp_path, solver):
    d = defence(tmp_path, steps=4, solver=solver)
    outputs, reached = spy_on_network(d)
    x = torch.rand(2, 1, 28, 28, requires_grad=True)
    d(x).sum().backward()
    assert len(outputs) == d.network_calls() == 4
    assert sorted(i for i, _ in reached) == [0, 1, 2, 3]  # every step's output got a gradient
    assert all(norm > 0 for _, norm in reached)
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_bpda_has_the_defences_forward_and_the_classifiers_gradient(tmp_path):
    d = defence(tmp_path, seed=3)
    x = torch.rand(2, 1, 28, 28)
    plain = d(x)
    same = defence(tmp_path, seed=3)
    outputs, reached = spy_on_network(same)
    xg = x.clone().requires_grad_(True)
    logits = P.bpda(same)(xg)
    assert torch.allclose(logits, plain, atol=1e-6)  # the same noise, the same purification
    logits.sum().backward()
    assert reached == [] and float(xg.grad.abs().sum()) > 0  # no gradient through the network
    w = same.classifier.lin.weight.sum(0).view(1, 1, 28, 28)
    assert torch.allclose(xg.grad, w.expand_as(xg))  # the linear classifier's own gradient


def test_the_noise_is_seeded_and_new_at_every_call(tmp_path):
    x = torch.rand(2, 1, 28, 28)
    a, b = defence(tmp_path, seed=1), defence(tmp_path, seed=1)
    first = a.purify(x)
    assert torch.equal(first, b.purify(x))
    assert not torch.equal(first, a.purify(x))


def test_purification_timesteps_and_bad_settings(tmp_path):
    assert P.purification_timesteps(10, 3) == [10, 5, 0]
    assert P.purification_timesteps(2, 10) == [2, 1, 0]
    d = defence(tmp_path)
    with pytest.raises(Exception, match="t\\* must be in"):
        P.purify(d.ddpm, torch.rand(1, 1, 28, 28), t_star=20, steps=2)


def test_an_attack_with_eot_runs_against_the_defence(tmp_path):
    d = defence(tmp_path, steps=2)
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    curve = A.robustness_curve(d, x, y, [0.1], "apgd-ce", steps=2,
                               options=A.registry.AttackOptions(eot=2))
    assert 0.0 <= curve[0.1]["accuracy"] <= 1.0
