import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from hw4 import objectives as O
from hw4.theory.elbo import LinearGaussian, elbo_closed_form


def test_analytic_kl_matches_torch_distributions():
    mu, log_var = torch.randn(5, 3), torch.randn(5, 3)
    ref = kl_divergence(Normal(mu, (0.5 * log_var).exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(O.gaussian_kl(mu, log_var), ref)
    mu_p, lv_p = torch.randn(5, 3), torch.randn(5, 3)
    ref2 = kl_divergence(Normal(mu, (0.5 * log_var).exp()), Normal(mu_p, (0.5 * lv_p).exp())).sum(1)
    torch.testing.assert_close(O.gaussian_kl_two(mu, log_var, mu_p, lv_p), ref2)


def test_reconstruction_nlls_match_distributions():
    x = torch.rand(4, 1, 3, 3).round()
    logits = torch.randn(4, 1, 3, 3)
    ref = -torch.distributions.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(O.bernoulli_nll(logits, x), ref)
    mean = torch.rand(4, 1, 3, 3)
    ref_g = -Normal(mean, 0.3).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(O.gaussian_nll(mean, x, sigma=0.3), ref_g)


def test_beta_elbo_weights_only_the_kl():
    recon, kl = torch.tensor([2.0, 3.0]), torch.tensor([1.0, 0.5])
    t = O.beta_elbo(recon, kl, beta=4.0)
    torch.testing.assert_close(t.loss, torch.tensor([6.0, 5.0]))
    torch.testing.assert_close(t.elbo, torch.tensor([-3.0, -3.5]))


def test_warmup_and_free_bits():
    assert O.kl_warmup(0, 100, 2.0) == 0.0
    assert O.kl_warmup(50, 100, 2.0) == pytest.approx(1.0)
    assert O.kl_warmup(500, 100, 2.0) == 2.0
    kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]])  # batch means: 0.2 and 3.0
    assert float(O.free_bits_kl(kl, 0.5)) == pytest.approx(0.5 + 3.0)
    kl.requires_grad_(True)
    O.free_bits_kl(kl, 0.5).backward()
    assert kl.grad[:, 0].abs().sum() == 0 and kl.grad[:, 1].abs().sum() > 0


def test_iwae_is_exact_with_the_true_posterior():
    m = LinearGaussian()
    x = torch.randn(6, 3, dtype=torch.float64)
    mu, lv = m.posterior(x)
    lw = O.importance_log_weights(m.log_joint(x), mu, lv, k=7)
    torch.testing.assert_close(O.iwae_bound(lw), m.log_px(x), atol=1e-4, rtol=1e-5)


def test_iwae_is_a_bound_that_tightens_with_k():
    m = LinearGaussian()
    x = torch.randn(1, 3, dtype=torch.float64).expand(4000, 3)  # one x, 4000 independent estimates
    mu, lv = m.posterior(x)
    mu, lv = mu + 0.8, lv + 1.0  # a deliberately poor q
    g = torch.Generator().manual_seed(0)
    bounds = [float(O.iwae_bound(O.importance_log_weights(m.log_joint(x), mu, lv, k, g)).mean())
              for k in (1, 5, 50, 500)]
    true = float(m.log_px(x[:1]))
    assert all(b <= true + 1e-3 for b in bounds)
    assert all(b2 > b1 for b1, b2 in zip(bounds, bounds[1:], strict=False))
    assert true - bounds[-1] < 0.1 * (true - bounds[0])
    # k=1 is the ELBO: E_q[log p(x,z) - log q] computed independently in closed form
    lw1 = O.importance_log_weights(m.log_joint(x), mu, lv, 1, g)[0]
    se = float(lw1.std()) / math.sqrt(len(lw1))
    elbo = float(elbo_closed_form(m, x[:1], mu[:1], lv[:1]))
    assert float(lw1.mean()) == pytest.approx(elbo, abs=4 * se)

