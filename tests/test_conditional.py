"""Class-conditional DDPM with classifier-free guidance: the label mask of training, the guided
eps of sampling, and conditional checkpoints through the loader."""

import dataclasses

import pytest
import torch

from hw4 import diffusion, guidance, train
from hw4.checkpoint import save_checkpoint
from hw4.diffusion import DiffusionSchedule
from hw4.errors import HW4Error
from hw4.models.unet import UNet, UNetConfig
from hw4.trained import load_ddpm

TINY = dict(base_channels=8, channel_mults=(1, 2), attention_resolutions=(2,), num_heads=2, groups=4)


def tiny_unet(num_classes=10, seed=0) -> UNet:
    torch.manual_seed(seed)
    model = UNet(UNetConfig(**TINY, num_classes=num_classes)).eval()
    if num_classes:  # a fresh embedding is small next to the time embedding: make labels matter
        torch.nn.init.normal_(model.label_emb.weight, std=1.0)
    return model


def counting(model):
    """The network rows of each call to ``model``, and the model that records them."""
    calls = []

    def counted(*a):
        calls.append(a[0].shape[0])
        return model(*a)

    return calls, counted


def test_null_label_dropped_with_the_right_frequency():
    labels = torch.randint(0, 10, (200_000,), generator=torch.Generator().manual_seed(0))
    out = diffusion.drop_labels(labels, 0.2, 10, torch.Generator().manual_seed(1))
    dropped = out == 10
    # binomial(200k, 0.2): sd = 0.0009, so 0.005 is over 5 sd
    assert abs(dropped.float().mean().item() - 0.2) < 0.005
    assert torch.equal(out[~dropped], labels[~dropped])  # kept labels are untouched
    assert torch.equal(diffusion.drop_labels(labels, 0.0, 10), labels)
    assert (diffusion.drop_labels(labels, 1.0, 10) == 10).all()


def test_train_step_drops_labels_seeded():
    """The step draws t, noise and the mask from its generator: same seed, same loss."""
    x0 = torch.rand(6, 1, 28, 28) * 2 - 1
    y = torch.arange(6)
    sched = DiffusionSchedule.named("linear", 50)

    def loss(seed: int, p: float) -> float:
        m = tiny_unet()
        opt = torch.optim.SGD(m.parameters(), lr=0.0)
        return train.ddpm_train_step(m, sched, x0, opt, labels=y, p_uncond=p, grad_clip=None,
                                     generator=torch.Generator().manual_seed(seed))["loss"].item()

    assert loss(3, 0.5) == loss(3, 0.5)
    assert loss(3, 0.0) != loss(3, 1.0)  # the mask reaches the network


def test_guidance_zero_is_the_conditional_model():
    model = tiny_unet()
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([5, 10, 20, 40]), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        assert torch.equal(guidance.guided_model(model, y, 0.0, 10)(x, t), model(x, t, y))


@pytest.mark.parametrize("w", [0.5, 1.0, 3.0])
def test_guided_eps_is_the_homework_formula_from_two_calls(w):
    model = tiny_unet()
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([5, 10, 20, 40]), torch.tensor([7, 0, 9, 10])
    calls, counted = counting(model)
    with torch.no_grad():
        guided = guidance.guided_model(counted, y, w, 10)(x, t)
        cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 10))
    assert calls == [7]  # one network call: 4 conditional rows, the null halves of the 3 guided
    torch.testing.assert_close(guided, (1 + w) * cond - w * uncond, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided[3], uncond[3], rtol=1e-5, atol=1e-5)  # a null row stays unguided


def test_a_mixed_batch_doubles_only_its_guided_rows():
    """Requests batched together: rows with w = 0 or the null label cost one row, not two, and
    every row equals what it would be alone."""
    model = tiny_unet()
    x, t = torch.randn(5, 1, 28, 28), torch.tensor([5, 10, 20, 40, 80])
    y, w = torch.tensor([1, 2, 10, 4, 5]), torch.tensor([2.0, 0.0, 1.0, 0.0, 0.5])
    calls, counted = counting(model)
    with torch.no_grad():
        mixed = guidance.guided_model(counted, y, w, 10)(x, t)
        alone = torch.cat([guidance.guided_model(model, y[i:i + 1], float(w[i]), 10)(x[i:i + 1], t[i:i + 1])
                           for i in range(5)])
    assert calls == [5 + 2]  # rows 0 and 4 are guided
    torch.testing.assert_close(mixed, alone, rtol=1e-5, atol=1e-5)


def test_guidance_applies_only_within_its_interval_and_costs_rows_only_there():
    """Rows whose t lies within the interval (inclusive) are guided; the others are the plain
    conditional model, and their null halves are not run."""
    model = tiny_unet()
    x, t = torch.randn(4, 1, 28, 28), torch.tensor([100, 200, 700, 900])
    y = torch.tensor([1, 2, 3, 4])
    calls, counted = counting(model)
    with torch.no_grad():
        out = guidance.guided_model(counted, y, 2.0, 10, interval=(200, 700))(x, t)
        full = guidance.guided_model(model, y, 2.0, 10)(x, t)
        plain = model(x, t, y)
        outside = guidance.guided_model(counted, y[[0, 3]], 2.0, 10, interval=(200, 700))(
            x[[0, 3]], t[[0, 3]])
    assert calls == [4 + 2, 2]  # rows 1 and 2 guided; a batch wholly outside: one half only
    torch.testing.assert_close(out[1:3], full[1:3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[[0, 3]], plain[[0, 3]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outside, plain[[0, 3]], rtol=1e-5, atol=1e-5)
    assert guidance.interval_timesteps(1000) == (200, 700)  # the default: 0.2 T .. 0.7 T
    assert guidance.interval_timesteps(1000, None) is None
    with pytest.raises(HW4Error, match="guidance interval"):
        guidance.interval_timesteps(1000, (0.8, 0.2))


def test_unconditional_samples_of_a_conditional_model_use_the_null_label():
    model = tiny_unet()
    x, t = torch.randn(3, 1, 28, 28), torch.tensor([1, 2, 3])
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t, torch.full((3,), 10)))
        assert not torch.allclose(model(x, t), model(x, t, torch.zeros(3, dtype=torch.long)))


def test_unconditional_model_refuses_labels():
    model = tiny_unet(num_classes=None)
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 1, 28, 28), torch.tensor([1]), torch.tensor([3]))
    with pytest.raises(HW4Error, match="unconditional"):
        guidance.guided_model(model, torch.tensor([3]), 1.0, None)


def save_ddpm(path, model: UNet, *, with_model_config: bool = True) -> None:
    job = {**dataclasses.asdict(model.config), "schedule": "linear", "timesteps": 50,
           "prediction": "eps", "name": "x"}
    save_checkpoint(path, kind="unet", config=job, model=model,
                    model_config=dataclasses.asdict(model.config) if with_model_config else None)


def test_conditional_checkpoint_round_trips(tmp_path):
    model = tiny_unet()
    save_ddpm(tmp_path / "c.pt", model)
    trained = load_ddpm(tmp_path / "c.pt")
    assert trained.conditional and trained.num_classes == 10
    y = torch.tensor([0, 3, 10])
    a = trained.sample(3, steps=5, labels=y, guidance=2.0, seed=1)
    b = trained.sample(3, steps=5, labels=y, guidance=2.0, seed=1)
    assert torch.equal(a, b) and a.shape == (3, 1, 28, 28)
    assert not torch.equal(a, trained.sample(3, steps=5, labels=torch.tensor([5, 5, 5]), guidance=2.0,
                                             seed=1))
    with pytest.raises(HW4Error, match="labels must be in"):
        trained.sample(1, steps=2, labels=torch.tensor([11]))
    with pytest.raises(HW4Error, match="one per sample"):
        trained.sample(2, steps=2, labels=torch.tensor([1]))


def test_old_unconditional_checkpoint_still_loads(tmp_path):
    """A checkpoint from before model_config was saved: only the job config, no num_classes."""
    model = tiny_unet(num_classes=None)
    save_ddpm(tmp_path / "old.pt", model, with_model_config=False)
    state = torch.load(tmp_path / "old.pt", weights_only=True)
    state.pop("model_config")
    state["config"].pop("num_classes")
    torch.save(state, tmp_path / "old.pt")
    trained = load_ddpm(tmp_path / "old.pt")
    assert not trained.conditional
    assert trained.sample(2, steps=3, seed=0).shape == (2, 1, 28, 28)
    with pytest.raises(HW4Error, match="unconditional"):
        trained.sample(1, steps=2, labels=torch.tensor([1]))


@pytest.mark.parametrize("method,steps", [("ddim", 6), ("dpm++2m", 5), ("ddpm", None)])
def test_the_sample_chain_ends_in_the_samples_and_stops_when_dropped(tmp_path, method, steps):
    """``sample_chain`` yields every step in order, previews the first and every k-th, and ends in exactly
    ``sample``'s images; a consumer that stops iterating stops the network calls."""
    from hw4.trained import load_ddpm

    from .conftest import write_ddpm

    ddpm = load_ddpm(write_ddpm(tmp_path / "ddpm.pt"))
    kw = dict(method=method, steps=steps, labels=torch.tensor([3, 7]), guidance=1.0, seed=5)
    chain = list(ddpm.sample_chain(2, every=2, **kw))
    total = chain[-1].total
    assert [c.step for c in chain] == list(range(1, total + 1))
    assert [c.step for c in chain if c.preview is not None] == sorted({1, *range(2, total + 1, 2), total})
    assert all(c.final is None for c in chain[:-1])
    torch.testing.assert_close(chain[-1].final, ddpm.sample(2, **kw), rtol=0, atol=0)
    calls = []
    inner = ddpm.model.forward
    ddpm.model.forward = lambda *a, **k: calls.append(1) or inner(*a, **k)
    stream = ddpm.sample_chain(2, **kw)
    next(stream), next(stream)
    stream.close()  # the client left after two steps
    assert len(calls) == 2


def test_requests_drawn_as_one_batch_each_get_their_own_images(tmp_path):
    """``TrainedDDPM.draw``: a conditional request, an unconditional one and a second seed share one
    batch, and each gets exactly the images it gets alone; its chain ends in them too."""
    from hw4.samplers import SampleRequest
    from hw4.trained import load_ddpm

    from .conftest import write_ddpm

    ddpm = load_ddpm(write_ddpm(tmp_path / "ddpm.pt"))
    reqs = [SampleRequest(2, "ddim", 4, seed=1, labels=(3, 7), guidance=1.5),
            SampleRequest(1, "ddim", 4, seed=2),
            SampleRequest(3, "ddim", 4, seed=3, labels=(0, 0, 9), guidance=0.5)]
    together = ddpm.draw(reqs)
    for req, got in zip(reqs, together, strict=True):  # the same noise and labels; a larger
        # batch may round differently in the last bits, far below a grey level (1/255)
        torch.testing.assert_close(got, ddpm.draw([req])[0], rtol=0, atol=1e-4)
    other_seed = ddpm.draw([SampleRequest(2, "ddim", 4, seed=9, labels=(3, 7), guidance=1.5)])[0]
    assert (other_seed - together[0]).abs().max() > 0.1  # the seed matters: not a vacuous match
    torch.testing.assert_close(list(ddpm.chain(reqs[0]))[-1].final, together[0], rtol=0, atol=1e-6)
    with pytest.raises(HW4Error, match="same sampler settings"):
        ddpm.draw([reqs[0], SampleRequest(1, "ddim", 5)])
