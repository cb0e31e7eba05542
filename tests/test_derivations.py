"""Steps of docs/theory.md's derivations, each checked on a case with a known answer."""

import math

import pytest
import torch

from hw4.theory import elbo, fdiv


def gaussian_kl_diag(mu_q, lv_q, mu_p, lv_p) -> torch.Tensor:
    """KL(N(mu_q, e^lv_q) || N(mu_p, e^lv_p)), diagonal, summed over the last dim."""
    return 0.5 * (lv_p - lv_q + (lv_q.exp() + (mu_q - mu_p) ** 2) / lv_p.exp() - 1).sum(-1)


@pytest.mark.parametrize("shift", [0.0, 0.4, 1.5])
def test_elbo_gap_is_the_kl_to_the_true_posterior(shift):
    """log p(x) - ELBO(q) = KL(q(z|x) || p(z|x)), all three in closed form."""
    m = elbo.LinearGaussian()
    x = m.sample(5, torch.Generator().manual_seed(3))
    mu_post, lv_post = m.posterior(x)
    mu_q, lv_q = mu_post + shift, lv_post + shift / 2
    gap = m.log_px(x) - elbo.elbo_closed_form(m, x, mu_q, lv_q)
    torch.testing.assert_close(gap, gaussian_kl_diag(mu_q, lv_q, mu_post, lv_post), rtol=1e-9, atol=1e-10)
    if shift == 0.0:
        assert gap.abs().max() < 1e-10  # q = p(z|x): the bound is tight


def test_naive_estimator_variance_is_the_second_moment_formula():
    """Var of one naive sample p(x|z), z ~ p(z): E_p(z)[p(x|z)^2] - p(x)^2 (by quadrature
    of a 1-D latent), the k-sample variance is that over k."""
    m = elbo.LinearGaussian(data_dim=2, latent_dim=1)
    x = m.sample(1, torch.Generator().manual_seed(0))
    z = torch.linspace(-12, 12, 200_001, dtype=torch.float64)[:, None, None]  # (Z, 1, 1)
    prior = torch.exp(-0.5 * z[:, 0, 0] ** 2) / math.sqrt(2 * math.pi)
    lik = m.log_lik(x, z).exp()[:, 0]  # (Z,)
    px = math.exp(float(m.log_px(x)))
    second = float(torch.trapezoid(prior * lik**2, z[:, 0, 0]))
    assert float(torch.trapezoid(prior * lik, z[:, 0, 0])) == pytest.approx(px, rel=1e-8)
    g = torch.Generator().manual_seed(1)
    draws = m.log_lik(x, torch.randn(400_000, 1, 1, generator=g, dtype=torch.float64)).exp()[:, 0]
    assert float(draws.var()) == pytest.approx(second - px**2, rel=0.05)


GRID = torch.linspace(-14, 14, 280_001, dtype=torch.float64)
P, Q = (0.5, 1.0), (0.0, 1.3)


def gan_value(d: torch.Tensor) -> float:
    """V(D) = E_P log D + E_Q log(1 - D) by quadrature, D given on GRID."""
    p, q = fdiv.gaussian_pdf(GRID, *P), fdiv.gaussian_pdf(GRID, *Q)
    return float(torch.trapezoid(p * torch.log(d) + q * torch.log1p(-d), GRID))


def test_optimal_discriminator_maximises_the_gan_value():
    p, q = fdiv.gaussian_pdf(GRID, *P), fdiv.gaussian_pdf(GRID, *Q)
    d_star = p / (p + q)
    best = gan_value(d_star)
    g = torch.Generator().manual_seed(0)
    for scale in (0.3, 0.05, 0.005):  # perturb the logit of D*, smoothly and at random
        bumps = sum(torch.randn((), generator=g, dtype=torch.float64)
                    * torch.exp(-0.5 * (GRID - c) ** 2) for c in (-2.0, 0.0, 1.0, 3.0))
        assert gan_value(torch.sigmoid(torch.logit(d_star) + scale * bumps)) < best
    js = fdiv.divergence_by_quadrature(fdiv.DIVERGENCES["js"], P, Q)
    assert best == pytest.approx(2 * js - math.log(4), abs=1e-8)  # V(D*, G) = 2 JS - log 4


@pytest.mark.parametrize("name", sorted(fdiv.DIVERGENCES))
def test_conjugates_are_fenchel_conjugates(name):
    """f*(t) = sup_u (u t - f(u)) on a grid of u, at t inside the image of the activation."""
    div = fdiv.DIVERGENCES[name]
    u = torch.logspace(-6, 6, 400_001, dtype=torch.float64)
    v = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64)
    t = div.activation(v)
    sup = (u[None, :] * t[:, None] - div.f(u)[None, :]).max(dim=1).values
    torch.testing.assert_close(sup, div.conjugate(t), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("eta", [1.0, 0.5, 0.05])
def test_ddim_elbo_term_is_a_weighted_eps_loss(eta):
    """Theorem 1 of DDIM as docs/theory.md derives it: KL(q_sigma(x_{t-1}|x_t, x_0) ||
    q_sigma(x_{t-1}|x_t, x0_hat)) = gamma_t ||eps - eps_theta||^2, with gamma_t's closed form."""
    from hw4.diffusion import DiffusionSchedule
    from hw4.theory.ddim import ddim_forward_step

    s = DiffusionSchedule.named("linear", 1000)
    g = torch.Generator().manual_seed(0)
    x0, eps, eps_hat = (torch.randn(64, generator=g, dtype=torch.float64) for _ in range(3))
    zero = torch.zeros(64, dtype=torch.float64)
    for t in (2, 100, 500, 999):
        ab, ab_prev = float(s.alphas_cumprod[t]), float(s.alphas_cumprod[t - 1])
        sigma = eta * math.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev))
        xt = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * eps
        x0_hat = (xt - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)
        mean_q = ddim_forward_step(s, x0, xt, t, t - 1, sigma, zero)  # noise 0: the means
        mean_p = ddim_forward_step(s, x0_hat, xt, t, t - 1, sigma, zero)
        kl = ((mean_q - mean_p) ** 2).sum() / (2 * sigma**2)  # equal covariances sigma^2 I
        gamma = (math.sqrt(ab_prev * (1 - ab) / ab) - math.sqrt(1 - ab_prev - sigma**2)) ** 2 \
            / (2 * sigma**2)
        assert float(kl) == pytest.approx(gamma * float(((eps - eps_hat) ** 2).sum()), rel=1e-9)
        assert gamma > 0


def test_importance_sampling_variance_is_the_chi_square_formula():
    """docs/theory.md §1: with z ~ q, Var[p(x, z)/q(z)] = p(x)^2 chi^2(p(z|x) || q), where
    chi^2(P || Q) = E_Q[(P/Q)^2] - 1 is computed by quadrature over a 1-D latent; zero at q = p(z|x)."""
    m = elbo.LinearGaussian(data_dim=2, latent_dim=1)
    x = m.sample(1, torch.Generator().manual_seed(0))
    mu_post, lv_post = (v.flatten()[0] for v in m.posterior(x))
    px = math.exp(float(m.log_px(x)))
    z = torch.linspace(-15, 15, 300_001, dtype=torch.float64)

    def log_normal(u, mu, lv):
        return -0.5 * ((u - mu) ** 2 / lv.exp() + lv + math.log(2 * math.pi))

    g = torch.Generator().manual_seed(2)
    for shift in (0.0, 0.5, 1.0):  # q's mean off by shift posterior deviations, q 1.2x as wide
        mu_q = mu_post + shift * (0.5 * lv_post).exp()
        lv_q = lv_post + (2 * math.log(1.2) if shift else 0.0)
        ratio = (2 * log_normal(z, mu_post, lv_post) - log_normal(z, mu_q, lv_q)).exp()
        chi2 = float(torch.trapezoid(ratio, z)) - 1
        draws = mu_q + (0.5 * lv_q).exp() * torch.randn(400_000, generator=g, dtype=torch.float64)
        log_joint = m.log_lik(x, draws[:, None, None])[:, 0] - 0.5 * draws**2 - 0.5 * math.log(2 * math.pi)
        w = (log_joint - log_normal(draws, mu_q, lv_q)).exp()
        assert float(w.mean()) == pytest.approx(px, rel=0.01)  # unbiased
        if shift == 0.0:  # q is the posterior: every weight is p(x), chi^2 = 0
            assert chi2 == pytest.approx(0.0, abs=1e-8) and float(w.std()) < 1e-9 * px
        else:
            assert chi2 > 0.1
            assert float(w.var()) == pytest.approx(px**2 * chi2, rel=0.05)
