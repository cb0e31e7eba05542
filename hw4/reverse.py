"""The reverse steps of the samplers as pure functions of tensors: DDPM's ancestral step, DDIM's
(any eta), DPM-Solver++(2M)'s multistep update, the timesteps each visits, and DDIM inversion.
``hw4.samplers`` registers them and runs the loop."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from hw4.diffusion import DiffusionSchedule, Model, Prediction, extract, predict_x0_eps, q_posterior
from hw4.errors import HW4Error

# one generator, or (generator, rows) blocks: a batch made of several independently seeded requests
Generators = torch.Generator | list[tuple[torch.Generator, int]] | None


# --- 1. reverse steps -------------------------------------------------------------------------

@dataclass
class StepOutput:
    prev_sample: torch.Tensor  # x_{t_prev}
    pred_original_sample: torch.Tensor  # x0_hat used to build it


def noise_like(x: torch.Tensor, generator: Generators) -> torch.Tensor:
    """N(0, I) noise shaped like x. ``generator`` may be a list of (generator, rows) blocks that
    cover x's rows: each block draws its own rows, so several requests sampled as one batch get
    exactly the noise each would get alone."""
    if isinstance(generator, list):
        if sum(rows for _, rows in generator) != x.shape[0]:
            raise HW4Error(f"generator blocks cover {sum(r for _, r in generator)} rows, "
                           f"the batch has {x.shape[0]}")
        return torch.cat([noise_like(torch.empty((rows, *x.shape[1:]), device=x.device,
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
    return StepOutput(mean + math.exp(0.5 * log_var) * noise_like(xt, generator), x0)


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
        prev = prev + sigma * noise_like(xt, generator)
    return StepOutput(prev, x0)


# --- 2. DPM-Solver++(2M): a multistep solver of the probability-flow ODE in x0 space ----------

def _lambda(ab: torch.Tensor) -> torch.Tensor:
    """lambda = log(alpha / sigma) = log(abar / (1 - abar)) / 2 (Lu et al. 2022), in float64;
    -inf where abar = 0 (zero terminal SNR)."""
    ab = ab.double()
    return 0.5 * torch.log(ab / (1 - ab))


def half_log_snrs(s: DiffusionSchedule) -> torch.Tensor:
    """lambda_t for every timestep t of ``s``, (T,)."""
    return _lambda(s.alphas_cumprod)


def half_log_snr(s: DiffusionSchedule, t: int) -> float:
    """lambda_t at one timestep; +inf at the clean end (t = -1)."""
    return math.inf if t < 0 else float(_lambda(s.alphas_cumprod[t]))


# DPM-Solver++'s last network call, as a fraction of T (see ``dpm_solver_timesteps``)
DPM_SOLVER_END = 0.03
# the lowest lambda its grid spaces from: the linear schedule's T-1 (-5.06) is above it; the
# cosine, sigmoid and zero-terminal-SNR schedules fall far below at their last few timesteps,
# where evenly spaced lambdas would spend calls on almost pure noise (diffusers' -5.1 clip)
DPM_SOLVER_LAMBDA_MIN = -5.1


def dpm_solver_timesteps(s: DiffusionSchedule, steps: int, end: float = DPM_SOLVER_END) -> list[int]:
    """``steps`` timesteps, descending, evenly spaced in lambda (half-log-SNR; Lu et al. 2022's
    "logSNR" spacing, theirs for low-resolution images): from T-1, so the first step starts from
    pure noise (Lin et al. 2023), to the timestep ``end`` x T, after which one first-order step
    lands on x0_hat. Each target lambda is met by the nearest integer timestep (a grid finer
    than the schedule visits fewer); the spacing starts no lower than ``DPM_SOLVER_LAMBDA_MIN``.

    Against the "trailing" grid (T-1, T-1-T/10, ..., T/10 - 1), whose last call sits at 0.1 T,
    this spends the same calls on the low noise levels where backgrounds and strokes are
    finished; ``end`` = 0.03 was chosen among 0, 0.01 and 0.03 (BENCHMARKS.md, "Sampling")."""
    T = s.num_timesteps
    if not 1 <= steps <= T:
        raise HW4Error(f"steps must be in 1..{T} for a {T}-step model, got {steps}")
    last = min(T - 1, round(end * T))
    lam = half_log_snrs(s)[last:]
    start = max(float(lam[-1]), DPM_SOLVER_LAMBDA_MIN)
    targets = torch.linspace(start, float(lam[0]), steps, dtype=torch.float64)[1:]
    nearest = (lam[None, :] - targets[:, None]).abs().argmin(dim=1) + last
    return sorted({T - 1, *nearest.tolist()}, reverse=True)


def dpmpp_2m_step(s: DiffusionSchedule, model_output: torch.Tensor, t: int, t_prev: int,
                  xt: torch.Tensor, *, previous: tuple[int, torch.Tensor] | None,
                  prediction: Prediction = "eps", clip: bool = True) -> StepOutput:
    """One DPM-Solver++(2M) step x_t -> x_{t_prev} (Lu et al. 2022, "DPM-Solver++", Alg. 2;
    ``t_prev = -1`` is the clean image). ``previous`` is the (timestep, x0_hat) of the step
    before (None at the first); the step's own is (t, ``pred_original_sample``). The first
    step, and the last (onto the clean image), are first order (DDIM's eta = 0 update written
    in lambda); the others add the multistep correction from the previous x0_hat:

        h = lambda_prev - lambda_t,  r = (lambda_t - lambda_last) / h
        D = x0_hat + (x0_hat - x0_last) / (2 r)
        x_prev = (sigma_prev / sigma_t) x_t - alpha_prev (exp(-h) - 1) D
    """
    # 1. the model's output as x0_hat (data prediction), clipped to the data range if asked
    x0, _ = _x0_eps(s, model_output, xt, t, prediction, clip)
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
    if previous is not None:
        t_last, x0_last = previous
        r = (lam_t - half_log_snr(s, t_last)) / h
        d = x0 + (x0 - x0_last) / (2 * r)
    return StepOutput(sigma_ratio * xt - alpha_prev * math.expm1(-h) * d, x0)


# --- 3. timesteps ------------------------------------------------------------------------

def ddim_timesteps(T: int, steps: int) -> list[int]:
    """``steps`` evenly spaced timesteps of 0..T-1, descending, always ending at 0."""
    if not 1 <= steps <= T:
        raise HW4Error(f"steps must be in 1..{T} for a {T}-step model, got {steps}")
    grid = torch.linspace(0, T - 1, steps, dtype=torch.float64).round().long().tolist()
    return sorted(set(grid), reverse=True)


# --- 4. DDIM inversion: the deterministic (eta = 0) map run from image to noise ----------------

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
