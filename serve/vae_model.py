"""The Serve app's VAE deployment: the VAE, its latent classifiers, and adversarial evaluation of
the three Fashion-MNIST classifiers under any attack of ``hw4.adversarial``'s registry."""

from pathlib import Path

import torch
import torch.nn.functional as F
from ray import serve

from hw4 import adversarial, data, viz
from hw4.adversarial.registry import AttackOptions
from hw4.assets import load_classifier
from hw4.errors import HW4Error
from hw4.trained import load_vae, reconstruction, stoppable
from hw4.vae_attacks import ATTACK_TARGETS, attack_targets
from serve.health import HEALTH_CHECK_PERIOD_S
from serve.replica import Reloadable, StopFlag, Unavailable, evaluation_summary, in_thread
from serve.schemas import b64decode

PURIFIED = ATTACK_TARGETS[2]  # reconstruct-then-classify: its reconstruction error is reported too


def _robustness_curve(model: torch.nn.Module, *args, stop: StopFlag, **kwargs) -> dict:
    return adversarial.robustness_curve(stoppable(model, stop), *args, **kwargs)  # stops on ``stop``


@serve.deployment(ray_actor_options={"num_cpus": 0.5}, max_ongoing_requests=16, max_queued_requests=32,
                  max_constructor_retry_count=3, health_check_period_s=HEALTH_CHECK_PERIOD_S,
                  user_config={"storage_path": "results", "checkpoint": None})
class VAEModel(Reloadable):
    family = "vae"

    def __init__(self) -> None:
        self._setup()
        self.pixel_cnn = load_classifier("fashion_mnist")
        self._test: tuple[torch.Tensor, torch.Tensor] | None = None

    def load(self, path: Path):
        trained = load_vae(path)
        trained.vae.requires_grad_(False)  # attacks need input gradients only
        return trained

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._test is None:
            try:
                self._test = data.load_tensors("fashion_mnist", "test")
            except (HW4Error, OSError, RuntimeError) as err:
                raise Unavailable(f"Fashion-MNIST test images are not available here: {err}") from err
        return self._test

    def images(self, spec: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Uploaded PNGs / pixel grids, or test-set indices -> (N, 1, 28, 28), labels or None."""
        if spec.get("test_indices") is not None:
            x, y = self.test_set()
            idx = torch.tensor(spec["test_indices"])
            if idx.max() >= len(x):
                raise HW4Error(f"test_index must be below {len(x)}")
            return x[idx], y[idx]
        out = [viz.image_from_png(b64decode(b)) if kind == "png" else viz.image_from_pixels(b)
               for kind, b in spec["uploads"]]
        labels = spec.get("labels")
        return torch.cat(out), torch.tensor(labels) if labels is not None else None

    async def test_image(self, index: int) -> tuple[torch.Tensor, int]:
        x, y = self.images({"test_indices": [index]})
        return x, int(y[0])

    def classifiers(self) -> dict[str, torch.nn.Module]:
        return attack_targets(self.require(), self.pixel_cnn)

    async def sample(self, n: int, seed: int) -> torch.Tensor:
        return self.require().vae.sample(n, torch.Generator().manual_seed(seed))

    async def decode(self, z: list[float]) -> torch.Tensor:
        vae = self.require().vae
        if len(z) != vae.config.latent_dim:
            raise HW4Error(f"z must have {vae.config.latent_dim} values (the latent size)")
        return vae.decode(torch.tensor([z]))

    async def reconstruct(self, spec: dict) -> dict:
        trained = self.require()
        x, _ = self.images(spec)
        with torch.no_grad():
            mu, log_var = trained.vae.encoder(x)
        return {"input": x, "reconstruction": trained.vae.reconstruct(x), "mu": mu.tolist(),
                "log_var": log_var.tolist() if log_var is not None else None}

    async def traverse(self, spec: dict, dims: list[int], low: float, high: float,
                       steps: int) -> torch.Tensor:
        vae = self.require().vae
        if max(dims) >= vae.config.latent_dim:
            raise HW4Error(f"dims must be below the latent size {vae.config.latent_dim}")
        x, _ = self.images(spec)
        return vae.traverse(x[:1], dims, torch.linspace(low, high, steps))

    async def classify(self, spec: dict) -> dict:
        x, y = self.images(spec)
        out = {"labels": y.tolist() if y is not None else None, "models": {}}
        with torch.no_grad():
            for name, model in self.classifiers().items():
                p = model(x).softmax(1)
                out["models"][name] = {"prediction": p.argmax(1).tolist(),
                                       "confidence": p.max(1).values.tolist(),
                                       "probabilities": p.tolist()}
        return out

    async def attack(self, spec: dict, attack: str, epsilons: list[float], models: list[str],
                     targeted: bool, options: AttackOptions, seed: int, examples: int) -> dict:
        x, y = self.images(spec)
        if y is None:
            raise HW4Error("uploaded images need labels (one class 0-9 per image)")
        chosen = {k: v for k, v in self.classifiers().items() if k in models}
        if not chosen:
            raise HW4Error(f"no such model here; available: {sorted(self.classifiers())}")
        vae = self.require().vae
        targets = (y + 1) % 10 if targeted else None
        result: dict = {"n": len(x), "accuracy": {}, "target_rate": {}, "predictions": {},
                        "examples": {}, "reconstruction_error": {}}
        for name, model in chosen.items():
            adversarials: dict[float, torch.Tensor] = {}
            # the library's loop, in one batch, so its callback sees every adversarial image; a
            # caller that leaves stops it at the model's next forward pass
            curve = await in_thread(
                _robustness_curve, model, x, y, epsilons, attack, targets=targets,
                batch=len(x), on_adversarial=adversarials.__setitem__, options=options,
                generator=torch.Generator().manual_seed(seed))
            result["accuracy"][name] = {eps: c["accuracy"] for eps, c in curve.items()}
            result["target_rate"][name] = {eps: c.get("target_rate", c["accuracy"])
                                           for eps, c in curve.items()}
            if attack == "autoattack":
                result.setdefault("per_attack", {})[name] = {eps: c["per_attack"]
                                                             for eps, c in curve.items()}
            result["predictions"][name], result["examples"][name] = {}, {}
            for eps, adv in adversarials.items():
                with torch.no_grad():
                    p = model(adv[:examples]).softmax(1)
                    if name == PURIFIED:
                        result["reconstruction_error"][eps] = float(
                            F.mse_loss(reconstruction(vae, adv), x))
                result["predictions"][name][eps] = {"class": p.argmax(1).tolist(),
                                                    "confidence": p.max(1).values.tolist()}
                result["examples"][name][eps] = adv[:examples]
        result["labels"] = y[:examples].tolist()
        result["originals"] = x[:examples]
        return result

    async def info(self) -> dict:
        return {**Reloadable.info(self),
                "evaluation": evaluation_summary(self.storage, self.path, self.origin)}
