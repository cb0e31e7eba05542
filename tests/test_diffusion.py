import math

import pytest
import torch

from hw4 import diffusion as D
from hw4 import reverse as R
from hw4 import samplers as S
from hw4.errors import HW4Error


def test_linear_schedule_matches_ddpm():
    betas = D.get_named_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert torch.allclose(betas[1] - betas[0], torch.tensor((0.02 - 1e-4) / 999, dtype=torch.float64))


def test_cosine_schedule_matches_improved_ddpm_formula():
    T, s = 1000, 0.008
    sched = D.DiffusionSchedule.from_betas(D.get_named_beta_schedule("cosine", T))

    def f(t):  # Nichol & Dhariwal's f(t)
        return math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2

    for t in (0, 10, 500, 900):
        # abar_t here is the product up to and including step t, i.e. f(t+1)/f(0)
        assert float(sched.alphas_cumprod[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-4)
    assert D.get_named_beta_schedule("cosine", T).max() <= 0.999


@pytest.mark.parametrize("name", D.SCHEDULES)
@pytest.mark.parametrize("T", [10, 100, 1000])
def test_schedules_are_valid(name, T):
    betas = D.get_named_beta_schedule(name, T)
    assert betas.shape == (T,) and betas.dtype == torch.float64
    assert (betas > 0).all() and (betas[:-1] < 1).all() and betas[-1] <= 1
    ab = torch.cumprod(1 - betas, 0)
    assert (ab[1:] < ab[:-1]).all() and ab[-1] < 0.05


def test_the_zero_terminal_snr_schedule_ends_at_pure_noise_and_keeps_its_start():
    linear = torch.cumprod(1 - D.get_named_beta_schedule("linear", 1000), 0)
    ab = torch.cumprod(1 - D.get_named_beta_schedule("linear-zero-snr", 1000), 0)
    assert ab[-1] == 0 and ab[-2] > 0  # SNR 0 at t = T only
    assert torch.isclose(ab[0], linear[0], rtol=1e-12)
    s = D.DiffusionSchedule.named("linear-zero-snr", 1000)
    # the v target stays finite at SNR 0 (x0 = -v there), and sampling starts from it
    x0, eps = D.predict_x0_eps(s, torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 999, "v")
    assert torch.equal(x0, -torch.ones(1, 1, 2, 2)) and torch.isfinite(eps).all()
    assert R.half_log_snr(s, 999) == -math.inf


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(HW4Error, match="unknown noise schedule"):
        D.get_named_beta_schedule("quadratic", 10)


def test_forward_process_mean_and_variance():
    s = D.DiffusionSchedule.named("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7)
    for t in (0, 250, 999):
        tt = torch.full((x0.shape[0],), t)
        xt = D.add_noise(s, x0, torch.randn(x0.shape, generator=g), tt)
        ab = float(s.alphas_cumprod[t])
        # 200k samples: standard error of the mean ~ 0.0022, of the variance ~ 0.0032
        assert float(xt.mean()) == pytest.approx(math.sqrt(ab) * 0.7, abs=0.01)
        assert float(xt.var()) == pytest.approx(1 - ab, abs=0.01 + 0.01 * (1 - ab))
        mean, var = D.q_mean_variance(s, x0[:1], tt[:1])
        assert float(var) == pytest.approx(1 - ab, rel=1e-5)


def test_posterior_matches_bayes_rule_on_gaussians():
    """q(x_{t-1}|x_t,x_0) from the closed form = product of q(x_{t-1}|x_0) and q(x_t|x_{t-1})."""
    s = D.DiffusionSchedule.named("cosine", 50)
    t = 20
    ab_prev, beta = float(s.alphas_cumprod[t - 1]), float(s.betas[t])
    x0, xt = torch.tensor([[0.3]]), torch.tensor([[-0.5]])
    # prior N(sqrt(ab_prev) x0, 1-ab_prev); likelihood x_t ~ N(sqrt(1-beta) x, beta)
    prec = 1 / (1 - ab_prev) + (1 - beta) / beta
    mean = (math.sqrt(ab_prev) * 0.3 / (1 - ab_prev) + math.sqrt(1 - beta) * -0.5 / beta) / prec
    m, v, _ = D.q_posterior(s, x0, xt, torch.tensor([t]))
    assert float(m) == pytest.approx(mean, rel=1e-4)
    assert float(v) == pytest.approx(1 / prec, rel=1e-4)


@pytest.mark.parametrize("prediction", D.PREDICTIONS)
def test_parameterisations_round_trip(prediction):
    s = D.DiffusionSchedule.named("linear", 100)
    x0, eps = torch.randn(4, 1, 5, 5), torch.randn(4, 1, 5, 5)
    t = torch.tensor([0, 10, 50, 99])
    xt = D.add_noise(s, x0, eps, t)
    target = D.training_target(s, x0, eps, t, prediction)
    x0_hat, eps_hat = D.predict_x0_eps(s, target, xt, t, prediction)
    torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(eps_hat, eps, atol=2e-3, rtol=1e-3)


def test_training_loss_is_zero_for_the_oracle_and_per_sample():
    s = D.DiffusionSchedule.named("linear", 100)
    x0, eps = torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4)
    t = torch.tensor([1, 2, 3])

    def oracle(xt, tt):  # predicts the true noise exactly
        return eps

    assert D.training_losses(oracle, s, x0, t, eps).shape == (3,)
    assert float(D.training_losses(oracle, s, x0, t, eps).max()) == 0.0
    assert float(D.training_losses(lambda xt, tt: 0 * eps, s, x0, t, eps).min()) > 0


@pytest.mark.parametrize("name", D.SCHEDULES)
def test_ddim_eta1_on_all_steps_is_ddpm_posterior_variance(name):
    s = D.DiffusionSchedule.named(name, 200)
    for t in (1, 5, 100, 199):
        sigma = R.ddim_sigma(s, t, t - 1, eta=1.0)
        assert sigma**2 == pytest.approx(float(s.posterior_variance[t]), rel=1e-4)
    assert R.ddim_sigma(s, 100, 99, eta=0.0) == 0.0


def test_ddim_eta1_step_mean_equals_ddpm_posterior_mean():
    s = D.DiffusionSchedule.named("linear", 100)
    xt, out = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    ddim = R.ddim_step(s, out, 40, 39, xt, eta=1.0, clip=False,
                       generator=torch.Generator().manual_seed(1))
    ddpm = R.ddpm_step(s, out, 40, xt, clip=False, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ddim.prev_sample, ddpm.prev_sample, atol=1e-4, rtol=1e-4)


def toy_model(x, t):
    return 0.1 * x + 0.001 * t.float().view(-1, 1, 1, 1)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    s = D.DiffusionSchedule.named("cosine", 100)
    xT = torch.randn(2, 1, 6, 6)

    def run(eta, seed):
        return S.sample(toy_model, s, xT.shape, method="ddim", steps=10, eta=eta, x_T=xT,
                        generator=torch.Generator().manual_seed(seed))

    torch.testing.assert_close(run(0.0, 1), run(0.0, 2), atol=0, rtol=0)
    assert (run(1.0, 1) - run(1.0, 2)).abs().max() > 1e-3


def test_ddpm_sampling_is_seeded_and_in_range():
    s = D.DiffusionSchedule.named("linear", 20)
    a = S.sample(toy_model, s, (2, 1, 4, 4), generator=torch.Generator().manual_seed(3), clip=True)
    b = S.sample(toy_model, s, (2, 1, 4, 4), generator=torch.Generator().manual_seed(3), clip=True)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert a.abs().max() <= 1.0 + 1e-6  # clipped: DDPM's last step is the clipped x-hat-0's mean


def test_ddim_timesteps():
    assert R.ddim_timesteps(1000, 1000) == list(range(999, -1, -1))
    ts = R.ddim_timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    with pytest.raises(HW4Error, match="steps must be"):
        R.ddim_timesteps(100, 101)


def test_sampler_progress_yields_every_step():
    s = D.DiffusionSchedule.named("linear", 30)
    steps = list(S.sample_progressive(toy_model, s, (1, 1, 2, 2), method="ddim", steps=7))
    assert len(steps) == 7
    with pytest.raises(HW4Error, match="unknown sampler"):
        list(S.sample_progressive(toy_model, s, (1, 1, 2, 2), method="euler"))


@pytest.mark.parametrize("method, eta", [("ddpm", 0.0), ("ddim", 1.0)])
def test_generator_blocks_give_each_request_its_own_noise(method, eta):
    """Two requests sampled as one batch get exactly the images each gets alone."""

    def model(x, t):  # deterministic, row-independent
        return 0.1 * x

    s = D.DiffusionSchedule.named("linear", 20)
    kw = dict(method=method, steps=5, eta=eta)
    alone = [S.sample(model, s, (n, 1, 4, 4), generator=torch.Generator().manual_seed(seed), **kw)
             for n, seed in ((2, 7), (3, 11))]
    blocks = [(torch.Generator().manual_seed(7), 2), (torch.Generator().manual_seed(11), 3)]
    batched = S.sample(model, s, (5, 1, 4, 4), generator=blocks, **kw)
    assert torch.allclose(batched, torch.cat(alone), atol=1e-6)
    with pytest.raises(Exception, match="cover 5 rows"):
        S.sample(model, s, (4, 1, 4, 4), generator=blocks, **kw)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_one_timestep_as_an_int_gives_the_per_row_tensor_answer(prediction):
    """Samplers pass t as an int (Python-float coefficients, no gathers or device syncs); the
    result must equal the per-row tensor path that training uses."""
    s = D.DiffusionSchedule.named("cosine", 100)
    gen = torch.Generator().manual_seed(0)
    xt, out, x0 = (torch.randn(3, 1, 4, 4, generator=gen) for _ in range(3))
    for t in (0, 37, 99):
        tt = torch.full((3,), t, dtype=torch.long)
        for a, b in zip(D.predict_x0_eps(s, out, xt, t, prediction),
                        D.predict_x0_eps(s, out, xt, tt, prediction), strict=True):
            torch.testing.assert_close(a, b)
        mean_i, var_i, logvar_i = D.q_posterior(s, x0, xt, t)
        mean_t, var_t, logvar_t = D.q_posterior(s, x0, xt, tt)
        torch.testing.assert_close(mean_i, mean_t)
        assert var_i == pytest.approx(float(var_t[0])) and logvar_i == pytest.approx(float(logvar_t[0]))
