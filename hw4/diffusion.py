"""Gaussian diffusion math as pure functions of tensors, independent of the network.

References: DDPM (Ho et al. 2020), improved DDPM (Nichol & Dhariwal 2021), DDIM (Song et al.
2021), v-prediction (Salimans & Ho 2022), sigmoid schedule (Chen 2023). A ``model`` is any
callable ``model(x_t (N,...), t (N,) long) -> model_output (N,...)``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from hw4.errors import HW4Error

ScheduleName = Literal["linear", "cosine", "sigmoid"]
Prediction = Literal["eps", "x0", "v"]
LossWeight = Literal["uniform", "min-snr"]
SCHEDULES = ("linear", "cosine", "sigmoid")
PREDICTIONS = ("eps", "x0", "v")
LOSS_WEIGHTS = ("uniform", "min-snr")
Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# one generator, or (generator, rows) blocks: a batch made of several independently seeded requests
Generators = torch.Generator | list[tuple[torch.Generator, int]] | None


# --- 1. schedules: name -> betas, float64 ------------------------------------------------------

def betas_from_alpha_bar(alpha_bar: Callable[[torch.Tensor], torch.Tensor], T: int,
                         max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = 1 - abar((t+1)/T) / abar(t/T), clipped at ``max_beta`` (improved DDPM eq. 17)."""
    s = torch.arange(T + 1, dtype=torch.float64) / T
    ab = alpha_bar(s)
    return (1 - ab[1:] / ab[:-1]).clamp(max=max_beta)


def get_named_beta_schedule(name: str, T: int) -> torch.Tensor:
    """Betas (T,) float64 for ``linear`` (DDPM), ``cosine`` (improved DDPM), ``sigmoid`` (Chen)."""
    if T < 2:
        raise HW4Error(f"need at least 2 timesteps, got {T}")
    if name == "linear":
        scale = 1000 / T  # keeps the total noise when T != 1000 (improved-diffusion's rescaling)
        return torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64).clamp(max=0.999)
    if name == "cosine":
        s = 0.008
        return betas_from_alpha_bar(lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2, T)
    if name == "sigmoid":
        start, end, tau = -3.0, 3.0, 1.0
        v0, v1 = 1 / (1 + math.exp(-start / tau)), 1 / (1 + math.exp(-end / tau))

        def alpha_bar(u: torch.Tensor) -> torch.Tensor:
            return (-torch.sigmoid((u * (end - start) + start) / tau) + v1) / (v1 - v0)

        return betas_from_alpha_bar(alpha_bar, T)
    raise HW4Error(f"unknown noise schedule {name!r}; use one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class DiffusionSchedule:
    """Every per-timestep constant, computed once in float64 and stored as float32 (T,)."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor  # multiplies x_0
    posterior_mean_coef2: torch.Tensor  # multiplies x_t

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    @classmethod
    def from_betas(cls, betas: torch.Tensor) -> DiffusionSchedule:
        b = betas.to(torch.float64)
        ab = torch.cumprod(1 - b, dim=0)
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        post_var = b * (1 - ab_prev) / (1 - ab)  # beta-tilde, DDPM eq. 7
        fields = dict(
            betas=b, alphas_cumprod=ab, alphas_cumprod_prev=ab_prev,
            sqrt_alphas_cumprod=ab.sqrt(), sqrt_one_minus_alphas_cumprod=(1 - ab).sqrt(),
            posterior_variance=post_var,
            # beta-tilde_0 = 0: use beta-tilde_1 in the log (improved-diffusion does the same)
            posterior_log_variance_clipped=torch.log(torch.cat([post_var[1:2], post_var[1:]])),
            posterior_mean_coef1=b * ab_prev.sqrt() / (1 - ab),
            posterior_mean_coef2=(1 - ab_prev) * (1 - b).sqrt() / (1 - ab),
        )
        return cls(**{k: v.float() for k, v in fields.items()})

    @classmethod
    def named(cls, name: str, T: int) -> DiffusionSchedule:
        return cls.from_betas(get_named_beta_schedule(name, T))

    def to(self, device: torch.device | str) -> DiffusionSchedule:
        return DiffusionSchedule(**{k: v.to(device) for k, v in self.__dict__.items()})


def extract(arr: torch.Tensor, t: torch.Tensor | int, shape: torch.Size) -> torch.Tensor | float:
    """arr[t] reshaped to (N, 1, 1, ...) so it broadcasts against a batch of ``shape``.

    An int ``t`` (one timestep for the whole batch, as in sampling) gives a Python float: no
    gather and, with the schedule on the CPU, no device round trip.
    """
    if isinstance(t, int):
        return float(arr[t])
    out = arr.to(t.device)[t]
    return out.view(t.shape[0], *([1] * (len(shape) - 1)))


# --- 2. forward process and its posterior ------------------------------------------------------

def add_noise(s: DiffusionSchedule, x0: torch.Tensor, noise: torch.Tensor,
              t: torch.Tensor) -> torch.Tensor:
    """Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM eq. 4)."""
    return (extract(s.sqrt_alphas_cumprod, t, x0.shape) * x0
            + extract(s.sqrt_one_minus_alphas_cumprod, t, x0.shape) * noise)


def q_mean_variance(s: DiffusionSchedule, x0: torch.Tensor,
                    t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of q(x_t | x_0)."""
    return (extract(s.sqrt_alphas_cumprod, t, x0.shape) * x0,
            extract(1 - s.alphas_cumprod, t, x0.shape).expand_as(x0))


def q_posterior(s: DiffusionSchedule, x0: torch.Tensor, xt: torch.Tensor,
                t: torch.Tensor | int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7)."""
    mean = (extract(s.posterior_mean_coef1, t, xt.shape) * x0
            + extract(s.posterior_mean_coef2, t, xt.shape) * xt)
    return (mean, extract(s.posterior_variance, t, xt.shape),
            extract(s.posterior_log_variance_clipped, t, xt.shape))


# --- 3. parameterisations: eps, x0 and v ------------------------------------------------------

def predict_x0_eps(s: DiffusionSchedule, model_output: torch.Tensor, xt: torch.Tensor,
                   t: torch.Tensor | int, prediction: Prediction) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn a model output of any parameterisation into (x0_hat, eps_hat)."""
    a = extract(s.sqrt_alphas_cumprod, t, xt.shape)
    b = extract(s.sqrt_one_minus_alphas_cumprod, t, xt.shape)
    if prediction == "eps":
        eps = model_output
        return (xt - b * eps) / a, eps
    if prediction == "x0":
        x0 = model_output
        return x0, (xt - a * x0) / b
    if prediction == "v":  # v = a eps - b x0, so x0 = a x_t - b v and eps = b x_t + a v
        return a * xt - b * model_output, b * xt + a * model_output
    raise HW4Error(f"unknown prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}")


def training_target(s: DiffusionSchedule, x0: torch.Tensor, noise: torch.Tensor,
                    t: torch.Tensor, prediction: Prediction) -> torch.Tensor:
    """What the network regresses onto for each parameterisation."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    if prediction == "v":
        return (extract(s.sqrt_alphas_cumprod, t, x0.shape) * noise
                - extract(s.sqrt_one_minus_alphas_cumprod, t, x0.shape) * x0)
    raise HW4Error(f"unknown prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}")


def snr(s: DiffusionSchedule, t: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio abar_t / (1 - abar_t) at timesteps ``t`` (N,), in float64."""
    ab = s.alphas_cumprod.to(t.device, torch.float64)[t]
    return ab / (1 - ab)


def loss_weights(s: DiffusionSchedule, t: torch.Tensor, prediction: Prediction,
                 weighting: LossWeight = "uniform", gamma: float = 5.0) -> torch.Tensor:
    """Per-sample weights (N,) of the regression loss, float32.

    Min-SNR-gamma (Hang et al. 2023, sec. 3.4) weights the x0-space error by min(SNR_t, gamma).
    With x_t = a x0 + b eps (a^2 + b^2 = 1, SNR = a^2/b^2), each target's error is a multiple of
    the x0 error: x0 - x0_hat = (b/a)(eps_hat - eps), so |eps err|^2 = SNR |x0 err|^2; and
    x0 = a x_t - b v, so |v err|^2 = |x0 err|^2 / b^2 = (SNR + 1) |x0 err|^2. The same x0-space
    weight is therefore min(SNR, gamma)/SNR on the eps loss, min(SNR, gamma)/(SNR + 1) on the
    v loss and min(SNR, gamma) on the x0 loss."""
    if weighting == "uniform":
        return torch.ones(t.shape, device=t.device)
    if weighting != "min-snr":
        raise HW4Error(f"unknown loss weighting {weighting!r}; use one of {', '.join(LOSS_WEIGHTS)}")
    if gamma <= 0:
        raise HW4Error(f"the min-SNR gamma must be positive, got {gamma}")
    r = snr(s, t)
    clipped = r.clamp(max=gamma)
    if prediction == "eps":
        w = clipped / r
    elif prediction == "v":
        w = clipped / (r + 1)
    elif prediction == "x0":
        w = clipped
    else:
        raise HW4Error(f"unknown prediction {prediction!r}; use one of {', '.join(PREDICTIONS)}")
    return w.float()


def training_losses(model: Model, s: DiffusionSchedule, x0: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor | None = None, prediction: Prediction = "eps",
                    labels: torch.Tensor | None = None, weighting: LossWeight = "uniform",
                    snr_gamma: float = 5.0) -> torch.Tensor:
    """DDPM's simple loss ||target - model(x_t, t[, y])||^2 averaged per sample: (N,) (DDPM
    eq. 14), times ``loss_weights`` (1 for ``uniform``). ``labels`` (N,) go to a
    class-conditional model as they are: drop them to the null label beforehand
    (``drop_labels``) to train the unconditional model alongside."""
    if noise is None:
        noise = torch.randn_like(x0)
    xt = add_noise(s, x0, noise, t)
    out = model(xt, t) if labels is None else model(xt, t, labels)
    err = (training_target(s, x0, noise, t, prediction) - out) ** 2
    per_sample = err.flatten(1).mean(dim=1)
    if weighting == "uniform":
        return per_sample
    return per_sample * loss_weights(s, t, prediction, weighting, snr_gamma)


# --- 3b. classifier-free guidance (Ho & Salimans 2022) ------------------------------------------

def drop_labels(labels: torch.Tensor, p_uncond: float, null_label: int,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """The homework's training mask: each label becomes ``null_label`` with probability
    ``p_uncond``, independently per example, so one network learns eps(x_t, t, c) and eps(x_t, t)."""
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < p_uncond  # (N,)
    return torch.where(drop, torch.full_like(labels, null_label), labels)


def guide(cond: torch.Tensor, uncond: torch.Tensor, w: float | torch.Tensor) -> torch.Tensor:
    """eps~ = (1 + w) eps(x_t, c) - w eps(x_t, null): the homework's convention, w = 0 is the plain
    conditional model; ``w`` a number or one weight per row (N,). The weights sum to one, so for
    a fixed x_t the combination is the same in eps, x0 or v space (each is an affine map of the
    other): any ``prediction`` may be guided."""
    if torch.is_tensor(w):
        w = w.to(cond.device, cond.dtype).view(-1, *([1] * (cond.dim() - 1)))  # (N, 1, ...)
    return (1 + w) * cond - w * uncond


def guided_model(model: Callable[..., torch.Tensor], labels: torch.Tensor | None,
                 w: float | torch.Tensor, null_label: int | None) -> Model:
    """A ``model(x_t, t)`` that samples class ``labels`` (N,) with guidance ``w`` (a number, or
    one per row: requests with different weights can share a batch).

    One network call per step on N + G rows: every row's conditional half, and the null half of
    the G rows that are guided (w != 0 and a label other than ``null_label``). Unguided rows and
    null-label rows (unconditional samples, which guidance would leave unchanged) cost one row
    each. With no labels the model runs as it is (an unconditional model, or all-null labels)."""
    if labels is None:
        return model
    if null_label is None:
        raise HW4Error("labels need a class-conditional model; this one is unconditional")
    weights = torch.as_tensor(w, dtype=torch.float32).flatten().cpu().expand(len(labels))
    guided = ((weights != 0) & (labels.cpu() != null_label)).nonzero().flatten()  # (G,)
    if len(guided) == 0:  # no guidance anywhere: the conditional model alone
        return lambda x, t: model(x, t, labels.to(x.device))

    def call(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        y, g = labels.to(x.device), guided.to(x.device)
        out = model(torch.cat([x, x[g]]), torch.cat([t, t[g]]),
                    torch.cat([y, torch.full_like(y[g], null_label)]))
        cond, uncond = out[:len(x)], out[len(x):]  # (N, ...), (G, ...)
        return cond.index_copy(0, g, guide(cond[g], uncond, weights[guided]))

    return call


# --- 4. reverse steps -------------------------------------------------------------------------

@dataclass
class StepOutput:
    prev_sample: torch.Tensor  # x_{t_prev}
    pred_original_sample: torch.Tensor  # x0_hat used to build it


def _noise_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """N(0, I) noise shaped like x. ``generator`` may be a list of (generator, rows) blocks that
    cover x's rows: each block draws its own rows, so several requests sampled as one batch get
    exactly the noise each would get alone."""
    if isinstance(generator, list):
        if sum(rows for _, rows in generator) != x.shape[0]:
            raise HW4Error(f"generator blocks cover {sum(r for _, r in generator)} rows, "
                           f"the batch has {x.shape[0]}")
        return torch.cat([_noise_like(torch.empty((rows, *x.shape[1:]), device=x.device,
                                                  dtype=x.dtype), g) for g, rows in generator])
    device = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)


def _x0_eps(s: DiffusionSchedule, model_output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor | int,
            prediction: Prediction, clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    x0, eps = predict_x0_eps(s, model_output, xt, t, prediction)
    if clip:  # keep x0 in the data range and keep eps consistent with the clipped x0
        x0 = x0.clamp(-1, 1)
        eps = (xt - extract(s.sqrt_alphas_cumprod, t, xt.shape) * x0) / extract(
            s.sqrt_one_minus_alphas_cumprod, t, xt.shape)
    return x0, eps


def ddpm_step(s: DiffusionSchedule, model_output: torch.Tensor, t: int, xt: torch.Tensor, *,
              prediction: Prediction = "eps", clip: bool = True,
              generator: Generators = None) -> StepOutput:
    """One ancestral step x_t -> x_{t-1} ~ N(mu~(x_t, x0_hat), beta~_t I) (DDPM Alg. 2)."""
    x0, _ = _x0_eps(s, model_output, xt, t, prediction, clip)
    mean, _, log_var = q_posterior(s, x0, xt, t)
    if t == 0:
        return StepOutput(mean, x0)
    return StepOutput(mean + math.exp(0.5 * log_var) * _noise_like(xt, generator), x0)


def ddim_sigma(s: DiffusionSchedule, t: int, t_prev: int, eta: float) -> float:
    """sigma_t(eta) of DDIM eq. 16; eta = 1 gives DDPM's posterior std when t_prev = t - 1."""
    ab = s.alphas_cumprod[t].double()
    ab_prev = s.alphas_cumprod[t_prev].double() if t_prev >= 0 else torch.ones((), dtype=ab.dtype)
    return float(eta * torch.sqrt((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)))


def ddim_step(s: DiffusionSchedule, model_output: torch.Tensor, t: int, t_prev: int,
              xt: torch.Tensor, *, eta: float = 0.0, prediction: Prediction = "eps",
              clip: bool = True, generator: Generators = None) -> StepOutput:
    """One DDIM step x_t -> x_{t_prev} (DDIM eq. 12); ``t_prev = -1`` means the clean image."""
    # 1. predicted x_0 and the noise direction it implies
    x0, eps = _x0_eps(s, model_output, xt, t, prediction, clip)
    # 2. abar at the previous step (abar_{-1} = 1: the last step lands on x_0 itself)
    ab_prev = float(s.alphas_cumprod[t_prev]) if t_prev >= 0 else 1.0
    sigma = ddim_sigma(s, t, t_prev, eta)
    # 3. x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z   (eq. 12)
    prev = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - sigma**2, 0.0)) * eps
    if sigma > 0:
        prev = prev + sigma * _noise_like(xt, generator)
    return StepOutput(prev, x0)


# --- 4b. DPM-Solver++(2M): a multistep solver of the probability-flow ODE in x0 space ----------

def half_log_snr(s: DiffusionSchedule, t: int) -> float:
    """lambda_t = log(alpha_t / sigma_t) = log(abar_t / (1 - abar_t)) / 2 (Lu et al. 2022);
    +inf at the clean end (t = -1)."""
    if t < 0:
        return math.inf
    ab = float(s.alphas_cumprod[t].double())
    return 0.5 * math.log(ab / (1 - ab))


def dpm_solver_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` timesteps of 0..T-1, descending, "trailing" spacing: T-1, T-1-T/steps, ...
    (the first step starts from the noisiest timestep; Lin et al. 2023, Table 2)."""
    if not 1 <= steps <= T:
        raise HW4Error(f"steps must be in 1..{T} for a {T}-step model, got {steps}")
    grid = torch.arange(T, 0, -T / steps, dtype=torch.float64).round().long() - 1
    return sorted(set(grid.clamp(min=0).tolist()), reverse=True)


def dpmpp_2m_step(s: DiffusionSchedule, model_output: torch.Tensor, t: int, t_prev: int,
                  xt: torch.Tensor, *, history: list[tuple[int, torch.Tensor]],
                  prediction: Prediction = "eps", clip: bool = True) -> StepOutput:
    """One DPM-Solver++(2M) step x_t -> x_{t_prev} (Lu et al. 2022, "DPM-Solver++", Alg. 2;
    ``t_prev = -1`` is the clean image). ``history`` holds (timestep, x0_hat) of the steps
    before, oldest first; this step appends its own. The first step, and the last (onto the
    clean image), are first order (DDIM's eta = 0 update written in lambda); the others add the
    multistep correction from the previous x0_hat:

        h = lambda_prev - lambda_t,  r = (lambda_t - lambda_last) / h
        D = x0_hat + (x0_hat - x0_last) / (2 r)
        x_prev = (sigma_prev / sigma_t) x_t - alpha_prev (exp(-h) - 1) D
    """
    # 1. the model's output as x0_hat (data prediction), clipped to the data range if asked
    x0, _ = _x0_eps(s, model_output, xt, t, prediction, clip)
    history.append((t, x0))
    if t_prev < 0:  # onto the clean image: lambda = inf, the first-order step lands on x0_hat
        return StepOutput(x0, x0)
    # 2. the step's size in half-log-SNR, and the noise and signal scales at both ends
    lam_t, lam_prev = half_log_snr(s, t), half_log_snr(s, t_prev)
    h = lam_prev - lam_t
    ab_t, ab_prev = float(s.alphas_cumprod[t].double()), float(s.alphas_cumprod[t_prev].double())
    sigma_ratio = math.sqrt((1 - ab_prev) / (1 - ab_t))
    alpha_prev = math.sqrt(ab_prev)
    # 3. first order at the start, second order (the 2M multistep) once a previous x0 exists
    d = x0
    if len(history) >= 2:
        t_last, x0_last = history[-2]
        r = (lam_t - half_log_snr(s, t_last)) / h
        d = x0 + (x0 - x0_last) / (2 * r)
    return StepOutput(sigma_ratio * xt - alpha_prev * math.expm1(-h) * d, x0)


# --- 5. sampling loops ------------------------------------------------------------------------

def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps of 0..T-1, descending, always ending at 0."""
    if not 1 <= steps <= T:
        raise HW4Error(f"steps must be in 1..{T} for a {T}-step model, got {steps}")
    grid = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(grid), reverse=True)


Method = Literal["ddpm", "ddim", "dpm++2m"]
METHODS = ("ddpm", "ddim", "dpm++2m")


def sampler_timesteps(method: Method, T: int, steps: int | None) -> list[int]:
    """The descending timesteps a sampler visits: all T (DDPM), ``steps`` evenly spaced ending
    at 0 (DDIM), or ``steps`` trailing ones starting at T-1 (DPM-Solver++)."""
    if method == "ddpm":
        return list(range(T - 1, -1, -1))
    if method == "ddim":
        return ddim_timesteps(T, steps or 50)
    if method == "dpm++2m":
        return dpm_solver_timesteps(T, steps or 20)
    raise HW4Error(f"unknown sampler {method!r}; use one of {', '.join(METHODS)}")


def sample_progressive(model: Model, s: DiffusionSchedule, shape: tuple[int, ...], *,
                       method: Method = "ddpm", steps: int | None = None,
                       eta: float = 0.0, prediction: Prediction = "eps", clip: bool = True,
                       generator: Generators = None, device: str | torch.device = "cpu",
                       x_T: torch.Tensor | None = None,
                       progress: bool = False) -> Iterator[StepOutput]:
    """Yield every reverse step from x_T ~ N(0, I). DDPM uses all T steps; DDIM and
    DPM-Solver++(2M) ``steps`` network calls (``sampler_timesteps``).

    The schedule stays on the CPU: every step reads its coefficients as Python floats, so the
    loop never waits on the accelerator between steps.
    """
    ts = sampler_timesteps(method, s.num_timesteps, steps)
    s = s.to("cpu")
    x = x_T.to(device) if x_T is not None else _noise_like(torch.empty(shape, device=device),
                                                           generator)
    history: list[tuple[int, torch.Tensor]] = []  # DPM-Solver++'s previous x0_hat
    for i, t in enumerate(tqdm(ts, desc=f"{method} sampling", disable=not progress)):
        out = model(x, torch.full((shape[0],), t, device=device, dtype=torch.long))
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        if method == "ddpm":
            step = ddpm_step(s, out, t, x, prediction=prediction, clip=clip, generator=generator)
        elif method == "ddim":
            step = ddim_step(s, out, t, t_prev, x, eta=eta, prediction=prediction, clip=clip,
                             generator=generator)
        else:
            step = dpmpp_2m_step(s, out, t, t_prev, x, history=history, prediction=prediction,
                                 clip=clip)
            del history[:-1]  # the 2M update needs only the last x0_hat
        x = step.prev_sample
        yield step


@torch.inference_mode()
def sample(model: Model, s: DiffusionSchedule, shape: tuple[int, ...], **kwargs) -> torch.Tensor:
    """Run ``sample_progressive`` to the end and return x_0 in the model's data range."""
    last = deque(sample_progressive(model, s, shape, **kwargs), maxlen=1)  # keeps one step only
    return last[0].prev_sample


# --- 6. DDIM inversion: the deterministic (eta = 0) map run from image to noise ----------------

@torch.inference_mode()
def ddim_invert(model: Model, s: DiffusionSchedule, x0: torch.Tensor, *, steps: int = 50,
                prediction: Prediction = "eps", device: str | torch.device = "cpu",
                progress: bool = False) -> torch.Tensor:
    """Encode x0 into the x_T from which DDIM (eta = 0, same ``steps``) decodes back to ~x0.

    Runs DDIM's update (eq. 12, sigma = 0) upwards through the same timesteps, predicting eps
    at the current, lower step: x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) eps_hat
    (Song et al. 2021 sec. 4.3). The clean image stands in for x at t = 0 (abar_0 ~ 1).
    """
    s = s.to("cpu")  # coefficients as Python floats, as in sampling
    ts = ddim_timesteps(s.num_timesteps, steps)[::-1]  # ascending: 0, ..., T-1
    x = x0.to(device)
    for t_cur, t_next in tqdm(list(zip(ts[:-1], ts[1:], strict=True)), desc="ddim inversion",
                              disable=not progress):
        tt = torch.full((x.shape[0],), t_cur, device=device, dtype=torch.long)
        x0_hat, eps = predict_x0_eps(s, model(x, tt), x, t_cur, prediction)
        ab_next = float(s.alphas_cumprod[t_next])
        x = math.sqrt(ab_next) * x0_hat + math.sqrt(1 - ab_next) * eps
    return x
