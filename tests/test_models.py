import torch

from hw4 import train
from hw4.diffusion import DiffusionSchedule
from hw4.models.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    LatentClassifier,
    LatentClassifierConfig,
    reparameterize,
)
from hw4.models.classifier import ClassifierConfig, ConvClassifier
from hw4.models.unet import UNet, UNetConfig


def fixed_batch(n=16):
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(n, 1, 28, 28, generator=g) > 0.7).float()
    return x, torch.arange(n) % 10


def test_reparameterize_moments_and_gradient():
    mu, log_var = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 2 * torch.log(torch.tensor(3.0))]])
    z = reparameterize(mu.expand(100_000, 2), log_var.expand(100_000, 2),
                       torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.03, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 3.0]), atol=0.03, rtol=0)
    mu.requires_grad_(True)
    reparameterize(mu, log_var).sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones_like(mu))


def test_autoencoder_shapes():
    for variational in (True, False):
        m = Autoencoder(AutoencoderConfig(latent_dim=5, variational=variational))
        out = m(torch.rand(3, 1, 28, 28))
        assert out.logits.shape == (3, 1, 28, 28) and out.mu.shape == (3, 5)
        assert (out.log_var is None) != variational
    m = Autoencoder(AutoencoderConfig(latent_dim=5))
    assert m.sample(4).shape == (4, 1, 28, 28)
    trav = m.traverse(torch.rand(1, 1, 28, 28), [0, 3], torch.linspace(-2, 2, 7))
    assert trav.shape == (14, 1, 28, 28)


def overfit(model, x, steps, **kw):
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    first = train.autoencoder_train_step(model, x, opt, **kw)
    for _ in range(steps):
        last = train.autoencoder_train_step(model, x, opt, **kw)
    return first, last


def test_ae_and_vae_reconstruct_a_fixed_batch():
    x, _ = fixed_batch()
    for variational in (False, True):
        model = Autoencoder(AutoencoderConfig(latent_dim=16, variational=variational))
        first, last = overfit(model, x, 150, beta=0.1)
        assert last["recon"] < 0.5 * first["recon"], (variational, first, last)
        model.eval()
        err = (model.reconstruct(x) - x).abs().mean()
        assert err < 0.2


def test_latent_probe_freezes_encoder_and_finetune_does_not():
    vae = Autoencoder(AutoencoderConfig(latent_dim=8))
    x, y = fixed_batch()
    for mode, changes in (("probe", False), ("finetune", True)):
        clf = LatentClassifier(vae.encoder, 8, LatentClassifierConfig(mode=mode))
        before = [p.clone() for p in vae.encoder.parameters()]
        opt = torch.optim.Adam([p for p in clf.parameters() if p.requires_grad], lr=1e-2)
        for _ in range(5):
            train.classifier_train_step(clf, x, y, opt)
        moved = any((a - b).abs().max() > 0 for a, b in zip(before, vae.encoder.parameters(),
                                                            strict=True))
        assert moved == changes


def test_pixel_classifier_learns_a_batch():
    x, y = fixed_batch(32)
    clf = ConvClassifier(ClassifierConfig(dropout=0.0))
    opt = torch.optim.Adam(clf.parameters(), lr=2e-3)
    for _ in range(60):
        metrics = train.classifier_train_step(clf, x, y, opt)
    assert metrics["accuracy"] == 1.0
    assert clf.features(x).shape == (32, 128)


def test_unet_denoising_loss_falls():
    torch.manual_seed(0)
    x, _ = fixed_batch(8)
    x0 = x * 2 - 1
    model = UNet(UNetConfig(base_channels=16, channel_mults=(1, 2), groups=4, num_heads=2))
    sched = DiffusionSchedule.named("linear", 100)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    ema = train.EMA(model, decay=0.9)
    g = torch.Generator().manual_seed(0)
    losses = [train.ddpm_train_step(model, sched, x0, opt, ema=ema, generator=g)["loss"]
              for _ in range(60)]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5
    assert ema.num_updates == 60
    key = next(k for k, v in ema.shadow.items() if v.dtype.is_floating_point)
    assert not torch.equal(ema.shadow[key], model.state_dict()[key])
