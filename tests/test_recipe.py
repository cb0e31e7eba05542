"""The training recipe: min-SNR loss weights, the cosine learning-rate decay, the EMA warm-ups."""

import math

import pytest
import torch

from hw4 import diffusion as D
from hw4 import guidance, train
from hw4 import reverse as R
from hw4 import samplers as S
from hw4.errors import HW4Error

SCHED = D.DiffusionSchedule.named("linear", 1000)


@pytest.mark.parametrize("gamma", [1.0, 5.0, 20.0])
def test_min_snr_weights_equal_the_formula_for_each_target(gamma):
    t = torch.tensor([0, 10, 100, 300, 500, 999])
    ab = SCHED.alphas_cumprod.double()[t]
    snr = ab / (1 - ab)
    expected = {"eps": [min(float(r), gamma) / float(r) for r in snr],
                "v": [min(float(r), gamma) / (float(r) + 1) for r in snr],
                "x0": [min(float(r), gamma) for r in snr]}
    for prediction, want in expected.items():
        got = D.loss_weights(SCHED, t, prediction, "min-snr", gamma)
        assert got.tolist() == pytest.approx(want, rel=1e-5)
    assert D.loss_weights(SCHED, t, "v", "uniform").tolist() == [1.0] * len(t)


def test_min_snr_weighted_losses_agree_across_targets():
    """The weighting is one x0-space weight: for the same network error in x0 space, the weighted
    eps, v and x0 losses are equal (the derivation in ``loss_weights``)."""
    torch.manual_seed(0)
    x0, noise = torch.rand(6, 1, 4, 4) * 2 - 1, torch.randn(6, 1, 4, 4)
    t = torch.tensor([5, 50, 200, 400, 700, 990])
    xt = D.add_noise(SCHED, x0, noise, t)
    x0_hat = x0 + 0.1 * torch.randn_like(x0)  # one prediction, written in each parameterisation
    a = D.extract(SCHED.sqrt_alphas_cumprod, t, x0.shape)
    b = D.extract(SCHED.sqrt_one_minus_alphas_cumprod, t, x0.shape)
    outputs = {"x0": x0_hat, "eps": (xt - a * x0_hat) / b, "v": (a * xt - x0_hat) / b}
    losses = {}
    for prediction, out in outputs.items():

        def model(x, tt, out=out):  # a network that outputs ``out``
            return out

        losses[prediction] = D.training_losses(model, SCHED, x0, t, noise, prediction,
                                               weighting="min-snr", snr_gamma=5.0)
    assert torch.allclose(losses["eps"], losses["x0"], rtol=1e-3)
    assert torch.allclose(losses["v"], losses["x0"], rtol=1e-3)


def test_bad_weighting_is_a_user_error():
    with pytest.raises(HW4Error, match="loss weighting"):
        D.loss_weights(SCHED, torch.tensor([1]), "eps", "snr")
    with pytest.raises(HW4Error, match="gamma"):
        D.loss_weights(SCHED, torch.tensor([1]), "eps", "min-snr", 0.0)


def test_cosine_lr_warms_up_then_decays_to_the_floor():
    f = train.warmup_lambda(10, "cosine", 110, final_fraction=0.01)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.01 + 0.99 * 0.5)  # half way down the cosine
    assert f(110) == pytest.approx(0.01) and f(500) == pytest.approx(0.01)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert train.warmup_lambda(10)(500) == 1.0  # constant after the warm-up
    with pytest.raises(HW4Error, match="more steps"):
        train.warmup_lambda(10, "cosine", 10)


def test_ema_warmups_follow_their_rules_and_stop_at_the_cap():
    assert train.ema_decay_at(1, 0.999, "ramp") == pytest.approx(2 / 11)
    assert train.ema_decay_at(8, 0.999, "power") == pytest.approx(1 - 9 ** (-2 / 3))
    assert train.ema_decay_at(200, 0.999, "half-life") == pytest.approx(0.5 ** (1 / 10))
    for rule in train.EMA_WARMUPS:
        assert train.ema_decay_at(10**7, 0.995, rule) == 0.995
    # the half-life rule averages over about the last 5% of steps: its decay at n has
    # half-life 0.05 n, so after 0.05 n more updates the old weights count half
    n = 2000
    assert train.ema_decay_at(n, 1.0, "half-life") ** (0.05 * n) == pytest.approx(0.5)
    with pytest.raises(HW4Error, match="EMA warm-up"):
        train.EMA(torch.nn.Linear(2, 2), 0.99, "linear")


def test_an_ema_saved_before_the_warmup_choice_loads_as_ramp():
    ema = train.EMA(torch.nn.Linear(2, 2), 0.99, "power")
    state = ema.state_dict()
    del state["warmup"]
    ema.load_state_dict(state)
    assert ema.warmup == "ramp" and not math.isnan(ema.decay)


@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("steps", [5, 10, 20])
def test_dpm_solver_pp_2m_equals_diffusers_on_a_fixed_network(prediction, steps):
    """Step for step, on the same network outputs and timesteps (ours, given to diffusers),
    against diffusers' DPMSolverMultistepScheduler (dpmsolver++, order 2, final sigma 0)."""
    import numpy as np

    diffusers = pytest.importorskip("diffusers")  # the bench extra, installed by `make install`
    DPMSolverMultistepScheduler = diffusers.DPMSolverMultistepScheduler

    sched = D.DiffusionSchedule.named("linear", 1000)
    ref = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, trained_betas=sched.betas.double().numpy().astype(np.float64),
        algorithm_type="dpmsolver++", solver_order=2,
        prediction_type="epsilon" if prediction == "eps" else "v_prediction")
    ts = R.dpm_solver_timesteps(sched, steps)
    ref.set_timesteps(timesteps=ts)
    assert ref.timesteps.tolist() == ts and len(ts) == steps

    def network(x, t):  # fixed and smooth: the optimum for data at 0, plus a nonlinear term
        b = float(sched.sqrt_one_minus_alphas_cumprod[t])
        return b * x + 0.1 * math.sin(t / 97) * torch.tanh(x.roll(1, dims=-1))

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 8, 8, generator=gen, dtype=torch.float64)
    previous = None
    for i, t in enumerate(ts):
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        out = network(x, t)  # one network output, given to both: the updates are compared
        step = R.dpmpp_2m_step(sched, out, t, t_prev, x, previous=previous,
                               prediction=prediction, clip=False)
        ours, previous = step.prev_sample, (t, step.pred_original_sample)
        theirs = ref.step(out.clone(), t, x.clone()).prev_sample
        assert torch.allclose(ours, theirs.to(ours.dtype), atol=1e-5, rtol=1e-5), (i, t)
        x = ours


@pytest.mark.parametrize("name", ["linear", "cosine", "linear-zero-snr"])
def test_dpm_solver_grid_is_evenly_spaced_in_lambda_from_pure_noise_to_its_end(name):
    """From T-1 to 0.03 T, ten distinct calls; after the first, the lambda gaps are equal up to
    the rounding to integer timesteps (a tenth of a gap), also on schedules whose last
    timesteps fall to very low lambda (spaced from DPM_SOLVER_LAMBDA_MIN instead)."""
    s = D.DiffusionSchedule.named(name, 1000)
    ts = R.dpm_solver_timesteps(s, 10)
    assert ts[0] == 999 and ts[-1] == round(R.DPM_SOLVER_END * 1000) and len(ts) == 10
    assert ts == sorted(set(ts), reverse=True)
    gaps = [R.half_log_snr(s, b) - R.half_log_snr(s, a) for a, b in zip(ts[1:-1], ts[2:], strict=True)]
    assert max(gaps) - min(gaps) < 0.1 * min(gaps)
    assert S.timesteps("dpm++2m", s, None) == ts  # the sampler's default: 10 calls


def test_dpm_solver_samples_through_the_shared_loop_with_guidance():
    torch.manual_seed(0)
    calls = []

    def model(x, t, y=None):
        calls.append(x.shape[0])
        return 0.1 * x

    guided = guidance.guided_model(model, torch.tensor([1, 2]), 1.0, null_label=10)
    x = S.sample(guided, SCHED, (2, 1, 4, 4), method="dpm++2m", steps=10,
                 generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 1, 4, 4) and torch.isfinite(x).all()
    assert calls == [4] * 10  # 10 network calls of the 2N guided batch
    with pytest.raises(HW4Error, match="unknown sampler"):
        S.timesteps("euler", SCHED, 10)


@pytest.mark.parametrize("method", ["dpm++2m", "ddim"])
def test_the_loop_leaves_x0_unclipped_unless_asked(method):
    """MNIST's background sits on the data range's edge (-1): the loop does not clip x-hat-0 by
    default (S.CLIP_X0), so a prediction past the edge is not pulled onto it (and an average of
    predictions around -1 is not lifted to grey); clip=True still clips."""
    s = D.DiffusionSchedule.named("linear", 100)

    def model(x, t):  # an x0-predicting network that always says -1.2
        return torch.full_like(x, -1.2)

    assert S.CLIP_X0 is False
    out = S.sample(model, s, (2, 1, 4, 4), method=method, steps=5, prediction="x0",
                   generator=torch.Generator().manual_seed(0))
    clipped = S.sample(model, s, (2, 1, 4, 4), method=method, steps=5, prediction="x0", clip=True,
                       generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.full_like(out, -1.2))
    torch.testing.assert_close(clipped, torch.full_like(out, -1.0))
