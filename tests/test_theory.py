"""Each theory result against a closed form or an independent computation."""

import math

import pytest
import torch

from hw4 import diffusion as D
from hw4 import reverse as R
from hw4 import samplers as S
from hw4.objectives import iwae_bound
from hw4.theory import ddim, elbo, fdiv, hvae, score

# --- ELBO, importance sampling, gradient estimators -------------------------------------------

def test_naive_and_importance_estimators_are_unbiased_but_differ_in_variance():
    m = elbo.LinearGaussian()
    g = torch.Generator().manual_seed(0)
    x = m.sample(1, g)
    mu, lv = m.posterior(x)
    est = elbo.likelihood_estimators(m, x, mu + 0.3, lv + 0.3, k=10, repeats=20_000, generator=g)
    true = math.exp(float(m.log_px(x)))
    for e in est.values():
        se = float(e.std()) / math.sqrt(len(e))
        assert float(e.mean()) == pytest.approx(true, abs=5 * se)
    assert float(est["naive"].var()) > 10 * float(est["importance"].var())


def test_reparameterization_gradient_matches_score_function_with_less_variance():
    g = torch.Generator().manual_seed(0)
    mu, sigma = 0.7, 1.3
    est = elbo.gradient_estimators(lambda z: z**2 + torch.sin(z), mu, sigma, 200_000, g)
    true = 2 * mu + math.cos(mu) * math.exp(-sigma**2 / 2)  # d/dmu E[z^2 + sin z]
    for e in est.values():
        assert float(e.mean()) == pytest.approx(true, abs=5 * float(e.std()) / math.sqrt(len(e)))
    assert float(est["score_function"].var()) > 5 * float(est["reparameterization"].var())


def test_iwae_curve_rises_to_log_px_and_k1_is_the_closed_form_elbo():
    m = elbo.LinearGaussian()
    x = m.sample(1, torch.Generator().manual_seed(1))
    mu, lv = m.posterior(x)
    mu, lv = mu + 0.8, lv + 1.0
    curve = elbo.iwae_curve(m, x, mu, lv, [1, 10, 100, 1000], 2000, torch.Generator().manual_seed(2))
    means = [curve[k][0] for k in (1, 10, 100, 1000)]
    true = float(m.log_px(x))
    assert means == sorted(means) and means[-1] <= true + 1e-3
    se1 = curve[1][1] / math.sqrt(2000)
    assert means[0] == pytest.approx(float(elbo.elbo_closed_form(m, x, mu, lv)), abs=5 * se1)


# --- HVAE ---------------------------------------------------------------------------------------

def toy_images(n=1024, seed=0):
    """Binary 8x8 images from 4 latent bars: a small data set with real structure."""
    g = torch.Generator().manual_seed(seed)
    on = torch.rand(n, 4, generator=g) > 0.5
    img = torch.zeros(n, 8, 8)
    for i in range(4):
        img[:, 2 * i: 2 * i + 2, :] += on[:, i, None, None].float()
    flip = torch.rand(n, 8, 8, generator=g) < 0.05
    return (img.clamp(0, 1) != flip.float()).float().view(n, 1, 8, 8)


def test_hvae_elbo_terms_match_the_density_based_estimate():
    torch.manual_seed(0)
    model = hvae.HVAE(hvae.HVAEConfig(data_dim=64, hidden=32, z1=4, z2=2))
    x = toy_images(8).repeat(4000, 1, 1, 1)
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    with torch.no_grad():
        terms = model(x, g1)
        lw = model.log_weight(x, g2)  # same seed: the same z1, z2 samples
    # identical samples: recon - analytic KLs and log-weights differ only by E-vs-sample KL terms
    assert float(terms.elbo.mean()) == pytest.approx(float(lw.mean()), abs=0.15)
    assert (terms.kl_top >= 0).all() and (terms.kl_bottom >= 0).all()
    # and the ELBO is below the importance-weighted bound
    with torch.no_grad():
        lw_k = torch.stack([model.log_weight(x[:8]) for _ in range(500)])
    assert float(iwae_bound(lw_k).mean()) > float(terms.elbo[:8].mean())


def test_free_bits_and_small_beta_keep_units_that_a_large_beta_collapses():
    x = toy_images(2048)
    cfg = hvae.HVAEConfig(data_dim=64, hidden=64, z1=6, z2=3)
    runs = {"beta16": dict(beta=16.0), "beta16_free_bits": dict(beta=16.0, free_bits=1.0),
            "beta0.5": dict(beta=0.5)}
    diag = {k: hvae.diagnose(hvae.train_hvae(x, cfg, epochs=15, **kw), x) for k, kw in runs.items()}
    units = {k: d["active_top"] + d["active_bottom"] for k, d in diag.items()}
    assert units["beta16"] == 0 and diag["beta16"]["kl_top"] + diag["beta16"]["kl_bottom"] < 0.05
    for fixed in ("beta16_free_bits", "beta0.5"):
        assert units[fixed] >= 4 and diag[fixed]["kl_top"] > 0.1 and diag[fixed]["kl_bottom"] > 0.1
        assert diag[fixed]["recon"] < diag["beta16"]["recon"] - 10, diag


# --- f-divergences ------------------------------------------------------------------------------

P, Q = (0.5, 1.0), (0.0, 1.3)


def test_quadrature_matches_closed_forms():
    assert fdiv.divergence_by_quadrature(fdiv.DIVERGENCES["kl"], P, Q) == pytest.approx(
        fdiv.gaussian_kl(P, Q), rel=1e-6)
    assert fdiv.divergence_by_quadrature(fdiv.DIVERGENCES["reverse_kl"], P, Q) == pytest.approx(
        fdiv.gaussian_kl(Q, P), rel=1e-6)
    assert fdiv.divergence_by_quadrature(fdiv.DIVERGENCES["hellinger"], P, Q) == pytest.approx(
        fdiv.gaussian_hellinger2(P, Q), rel=1e-6)
    assert fdiv.divergence_by_quadrature(fdiv.DIVERGENCES["pearson"], P, Q) == pytest.approx(
        fdiv.gaussian_pearson(P, Q), rel=1e-6)
    js = fdiv.divergence_by_quadrature(fdiv.DIVERGENCES["js"], P, Q)
    assert 0 < js < math.log(2)
    assert fdiv.divergence_by_quadrature(fdiv.DIVERGENCES["gan"], P, Q) == pytest.approx(
        2 * js - math.log(4), rel=1e-6)


@pytest.mark.parametrize("name", sorted(fdiv.DIVERGENCES))
def test_bound_is_tight_at_the_optimal_critic_and_holds_for_others(name):
    div = fdiv.DIVERGENCES[name]
    true = fdiv.divergence_by_quadrature(div, P, Q)
    x = torch.linspace(-30, 30, 400_001, dtype=torch.float64)
    p, q = fdiv.gaussian_pdf(x, *P), fdiv.gaussian_pdf(x, *Q)

    def bound(t):
        return float(torch.trapezoid(p * t, x) - torch.trapezoid(q * div.conjugate(t), x))

    assert bound(fdiv.optimal_critic(div, P, Q)(x)) == pytest.approx(true, rel=1e-5, abs=1e-9)
    torch.manual_seed(0)
    for _ in range(5):  # random critics, squashed into dom f* by the output activation
        net = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        net = net.double()
        with torch.no_grad():
            t = div.activation(net(x[::100, None]).squeeze(1))
        xs = x[::100]
        ps, qs = fdiv.gaussian_pdf(xs, *P), fdiv.gaussian_pdf(xs, *Q)
        b = float(torch.trapezoid(ps * t, xs) - torch.trapezoid(qs * div.conjugate(t), xs))
        assert b <= true + 1e-6


@pytest.mark.parametrize("name", ["kl", "js"])
def test_trained_critic_reaches_the_true_divergence(name):
    div = fdiv.DIVERGENCES[name]
    g = torch.Generator().manual_seed(0)

    def sample_p(n):
        return P[0] + P[1] * torch.randn(n, 1, generator=g)

    def sample_q(n):
        return Q[0] + Q[1] * torch.randn(n, 1, generator=g)

    _, est = fdiv.train_critic(div, sample_p, sample_q, steps=600, batch=1024)
    true = fdiv.divergence_by_quadrature(div, P, Q)
    assert est == pytest.approx(true, rel=0.05)


def test_generator_losses_have_the_right_sign():
    """The generator's loss falls as the critic's scores on fakes rise (they look real)."""
    for div in fdiv.DIVERGENCES.values():
        low, high = torch.full((4,), -1.0), torch.full((4,), 1.0)
        assert fdiv.generator_loss(div, high) < fdiv.generator_loss(div, low)


# --- score matching -----------------------------------------------------------------------------

def mlp_score(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(2, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2)).double()


def test_esm_and_ism_differ_by_a_model_independent_constant():
    mix = score.default_mixture()
    x = mix.sample(200_000, torch.Generator().manual_seed(0))
    const = 0.5 * float((mix.score(x) ** 2).sum(-1).mean())
    for seed in (0, 1, 2):
        s = mlp_score(seed)
        esm = float(score.explicit_score_matching(s, x, mix.score(x)).detach())
        ism = float(score.implicit_score_matching(s, x).detach())
        assert esm - ism == pytest.approx(const, rel=0.01)


def test_dsm_equals_esm_on_the_noised_density_up_to_a_constant():
    mix, sigma = score.default_mixture(), 0.5
    g = torch.Generator().manual_seed(0)
    x = mix.sample(400_000, g)
    n = torch.randn(x.shape, generator=g, dtype=x.dtype)
    noised = mix.affine_noised(1.0, sigma)
    y = x + sigma * n
    gaps = []
    for seed in (0, 1, 2):
        s = mlp_score(seed)
        with torch.no_grad():
            dsm = float(score.denoising_score_matching(s, x, sigma, n))
            esm = float(score.explicit_score_matching(s, y, noised.score(y)))
        gaps.append(dsm - esm)
    assert max(gaps) - min(gaps) < 0.02 * abs(gaps[0])


def test_tweedie_and_eps_equals_minus_sigma_times_score():
    mix = score.default_mixture()
    y = mix.sample(1000, torch.Generator().manual_seed(3)) * 1.1
    sigma = 0.7
    noised = mix.affine_noised(1.0, sigma)
    torch.testing.assert_close(score.tweedie_denoiser(noised.score(y), y, sigma),
                               mix.posterior_mean(y, 1.0, sigma))
    a, b = math.sqrt(0.3), math.sqrt(0.7)  # x_t = a x0 + b eps, as in DDPM with abar = 0.3
    eps_posterior = (y - a * mix.posterior_mean(y, a, b)) / b
    torch.testing.assert_close(score.eps_from_score(mix.affine_noised(a, b).score(y), b),
                               eps_posterior)


# --- DDIM's non-Markovian forward process --------------------------------------------------------

@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_forward_process_keeps_ddpm_marginals(eta):
    s = D.DiffusionSchedule.named("cosine", 1000)
    x0 = torch.full((100_000, 1), 0.8, dtype=torch.float64)
    ts = R.ddim_timesteps(1000, 20)
    chain = ddim.ddim_forward_chain(s, x0, ts, eta=eta, generator=torch.Generator().manual_seed(0))
    for t in (ts[0], ts[5], ts[12], ts[-1]):
        ab = float(s.alphas_cumprod[t])
        assert float(chain[t].mean()) == pytest.approx(math.sqrt(ab) * 0.8, abs=0.01)
        assert float(chain[t].var()) == pytest.approx(1 - ab, abs=0.01 + 0.02 * (1 - ab))


def test_ddim_marginals_hold_for_an_arbitrary_sigma_schedule():
    s = D.DiffusionSchedule.named("linear", 200)
    ts = list(range(199, -1, -1))
    ab = s.alphas_cumprod.double()
    # random sigma_t within the allowed range [0, sqrt(1 - abar_{t-1})]
    g = torch.Generator().manual_seed(1)
    sig = [float(torch.rand((), generator=g, dtype=torch.float64) * math.sqrt(1 - ab[t - 1]))
           for t in ts[:-1]]
    x0 = torch.full((100_000, 1), -0.5, dtype=torch.float64)
    chain = ddim.ddim_forward_chain(s, x0, ts, sigmas=sig, generator=g)
    for t in (150, 60, 0):
        assert float(chain[t].mean()) == pytest.approx(math.sqrt(ab[t]) * -0.5, abs=0.01)
        assert float(chain[t].var()) == pytest.approx(float(1 - ab[t]), abs=0.01 + 0.02 * float(1 - ab[t]))


def test_a_wrong_direction_coefficient_would_break_the_marginals():
    """Sanity of the test above: dropping sigma^2 from the direction term changes the variance."""
    s = D.DiffusionSchedule.named("linear", 100)
    x0 = torch.zeros(50_000, 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    def noise():
        return torch.randn(x0.shape, generator=g, dtype=x0.dtype)

    xt = math.sqrt(1 - float(s.alphas_cumprod[50])) * noise()
    ab_prev, sigma = float(s.alphas_cumprod[49]), 0.1
    good = ddim.ddim_forward_step(s, x0, xt, 50, 49, sigma, noise())
    wrong = xt / math.sqrt(1 - float(s.alphas_cumprod[50])) * math.sqrt(1 - ab_prev) + sigma * noise()
    assert float(good.var()) == pytest.approx(1 - ab_prev, rel=0.03)
    assert abs(float(wrong.var()) - (1 - ab_prev)) > 0.005


def test_ddim_eta0_inverts_and_reconstructs():
    """With the exact eps for Gaussian data, encode-then-decode returns the image, with the
    first-order error of the discretisation: about halved when the steps double."""
    s = D.DiffusionSchedule.named("cosine", 1000)
    mean, var = 0.3, 0.04
    model = ddim.gaussian_oracle_eps(s, mean, var)
    x0 = mean + math.sqrt(var) * torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    errors = {}
    for steps in (100, 200, 1000):
        xT = R.ddim_invert(model, s, x0, steps=steps)
        back = S.sample(model, s, x0.shape, method="ddim", steps=steps, x_T=xT, clip=False)
        errors[steps] = float((back - x0).abs().mean())
    assert errors[200] < 0.6 * errors[100] and errors[1000] < 0.002
    assert float(xT.std()) == pytest.approx(1.0, abs=0.03)  # the code looks like N(0, I)
    # the decoder is deterministic: another generator gives the same image
    again = S.sample(model, s, x0.shape, method="ddim", steps=1000, x_T=xT, clip=False,
                     generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(back, again, rtol=0, atol=0)
