"""The samplers of a DDPM in one registry, and the loop that runs any of them.

Each ``SamplerKind`` says everything the rest of the project needs to know about a sampler: its
name and label, its default number of network calls, whether DDIM's eta applies, the timesteps
it visits, and its step (state in, state out). The sampling loop, evaluation, Serve's request
schema and batch keys, the web page and the figures all read it from here; ``DEFAULT_SAMPLER``
is the one default.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tqdm.auto import tqdm

from hw4 import reverse
from hw4.diffusion import DiffusionSchedule, Model, Prediction
from hw4.errors import HW4Error
from hw4.reverse import Generators, StepOutput


class Sampleable(Protocol):  # hw4.trained.TrainedDDPM, which imports this module
    def sample(self, n: int, **kwargs: Any) -> torch.Tensor: ...


State = Any  # what a step hands to the next: DPM-Solver++'s last (t, x0_hat), else None


@dataclass(frozen=True)
class StepArgs:
    """What every step of one sampling run shares."""

    eta: float
    prediction: Prediction
    clip: bool
    generator: Generators


Step = Callable[[DiffusionSchedule, torch.Tensor, int, int, torch.Tensor, State, StepArgs],
                tuple[StepOutput, State]]


def _ddpm(s, out, t, t_prev, x, state, a: StepArgs) -> tuple[StepOutput, State]:
    return reverse.ddpm_step(s, out, t, x, prediction=a.prediction, clip=a.clip,
                             generator=a.generator), None


def _ddim(s, out, t, t_prev, x, state, a: StepArgs) -> tuple[StepOutput, State]:
    return reverse.ddim_step(s, out, t, t_prev, x, eta=a.eta, prediction=a.prediction,
                             clip=a.clip, generator=a.generator), None


def _dpmpp_2m(s, out, t, t_prev, x, state, a: StepArgs) -> tuple[StepOutput, State]:
    step = reverse.dpmpp_2m_step(s, out, t, t_prev, x, previous=state, prediction=a.prediction,
                                 clip=a.clip)
    return step, (t, step.pred_original_sample)


@dataclass(frozen=True)
class SamplerKind:
    name: str
    label: str  # for people: figures, the page, reports
    default_steps: int | None  # network calls when none are asked for; None: all T (DDPM)
    uses_eta: bool  # DDIM's eta: 0 deterministic, 1 DDPM-like noise; the others ignore it
    # (schedule, steps) -> the descending timesteps visited
    grid: Callable[[DiffusionSchedule, int], list[int]]
    step: Step

    def visits(self, s: DiffusionSchedule, steps: int | None) -> list[int]:
        """The timesteps of a run on schedule ``s`` with ``steps`` network calls asked (None:
        the default; DDPM visits all T whatever is asked)."""
        return self.grid(s, steps if steps is not None and self.default_steps else
                         self.default_steps or s.num_timesteps)

    def calls_per_image(self, steps: int | None, s: DiffusionSchedule, guided: bool) -> int:
        """Network rows per image: one per step, two where classifier-free guidance applies."""
        return len(self.visits(s, steps)) * (2 if guided else 1)

    def describe(self, steps: int | None, eta: float | None = None) -> str:
        """For people: "DPM-Solver++(2M)-10", "DDIM-50 eta=1", "DDPM-1000" (with its steps)."""
        n = steps if steps is not None else self.default_steps
        text = self.label if n is None else f"{self.label}-{n}"
        return text + (f" eta={eta:g}" if self.uses_eta and eta is not None else "")


SAMPLERS: dict[str, SamplerKind] = {k.name: k for k in (
    SamplerKind("dpm++2m", "DPM-Solver++(2M)", 10, False, reverse.dpm_solver_timesteps, _dpmpp_2m),
    SamplerKind("ddim", "DDIM", 50, True, lambda s, steps: reverse.ddim_timesteps(
        s.num_timesteps, steps), _ddim),
    SamplerKind("ddpm", "DDPM", None, False, lambda s, steps: list(range(
        s.num_timesteps - 1, -1, -1)), _ddpm),
)}
# the fewest network calls per good image (BENCHMARKS.md, "The demo's model"): Serve's default
DEFAULT_SAMPLER = "dpm++2m"
NAMES: tuple[str, ...] = tuple(SAMPLERS)
# Whether each step clips x-hat-0 to the data range [-1, 1]. No: MNIST's background is exactly -1,
# on the range's edge, so clipping cuts off only the predictions below it and lifts the average
# there, a grey background; unclipped, the scatter around -1 cancels (the final image is clamped
# for display either way). On the demo model (DPM-Solver++(2M)-10, 500 samples; BENCHMARKS.md,
# "Sampling: guidance interval and x0 clipping") not clipping lowered the grey-background share
# from 27% to 23% at w = 1 and from 20% to 17% at w = 0.
CLIP_X0 = False


def kind(name: str) -> SamplerKind:
    if name not in SAMPLERS:
        raise HW4Error(f"unknown sampler {name!r}; use one of {', '.join(NAMES)}")
    return SAMPLERS[name]


def timesteps(method: str, s: DiffusionSchedule, steps: int | None) -> list[int]:
    """The descending timesteps ``method`` visits on schedule ``s`` with ``steps`` network calls
    (None: its default)."""
    return kind(method).visits(s, steps)


def spec_forms() -> list[str]:
    """How each sampler is written as a spec: ``ddpm``, ``ddim:STEPS``, ``ddim:STEPS:ETA``, ..."""
    forms = []
    for k in SAMPLERS.values():
        forms += [k.name] if k.default_steps is None else [f"{k.name}:STEPS"]
        forms += [f"{k.name}:STEPS:ETA"] if k.uses_eta else []
    return forms


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler setting, written ``ddpm`` | ``ddim:STEPS`` | ``ddim:STEPS:ETA`` | ``dpm++2m:STEPS``."""

    method: str = DEFAULT_SAMPLER
    steps: int | None = None
    eta: float = 0.0

    @classmethod
    def parse(cls, spec: str) -> SamplerSpec:
        name, *rest = spec.split(":")
        k = SAMPLERS.get(name)
        arity = 0 if k is None or k.default_steps is None else 2 if k.uses_eta else 1
        try:
            if k is not None and len(rest) <= arity and (arity == 0 or rest):
                steps = int(rest[0]) if rest else None
                eta = float(rest[1]) if len(rest) > 1 else 0.0
                if (steps is None or steps >= 1) and 0 <= eta <= 1:
                    return cls(name, steps, eta)
        except ValueError:
            pass
        raise HW4Error(f"bad sampler {spec!r}: use {', '.join(spec_forms())} (STEPS >= 1, "
                       "0 <= ETA <= 1)")

    @property
    def kind(self) -> SamplerKind:
        return kind(self.method)

    @property
    def label(self) -> str:
        return self.kind.describe(self.steps, self.eta)

    @property
    def reported_eta(self) -> float | None:
        """eta where it applies (DDIM), None for the samplers that ignore it."""
        return self.eta if self.kind.uses_eta else None

    def run(self, ddpm: Sampleable, n: int, seed: int, labels: torch.Tensor | None = None,
            guidance: float = 0.0) -> torch.Tensor:
        return ddpm.sample(n, method=self.method, steps=self.steps, eta=self.eta, seed=seed,
                           labels=labels, guidance=guidance)


def sample_progressive(model: Model, s: DiffusionSchedule, shape: tuple[int, ...], *,
                       method: str = DEFAULT_SAMPLER, steps: int | None = None,
                       eta: float = 0.0, prediction: Prediction = "eps", clip: bool = CLIP_X0,
                       generator: Generators = None, device: str | torch.device = "cpu",
                       x_T: torch.Tensor | None = None, visit: list[int] | None = None,
                       progress: bool = False) -> Iterator[StepOutput]:
    """Yield every reverse step of sampler ``method`` from x_T ~ N(0, I), one network call each
    (``timesteps``: all T for DDPM, ``steps`` for the others, None their default; ``visit``, a
    descending list, replaces them: for experiments with other grids).

    The schedule stays on the CPU: every step reads its coefficients as Python floats, so the
    loop never waits on the accelerator between steps.
    """
    k = kind(method)
    ts = visit if visit is not None else timesteps(method, s, steps)
    s = s.to("cpu")
    x = x_T.to(device) if x_T is not None else reverse.noise_like(
        torch.empty(shape, device=device), generator)
    args, state = StepArgs(eta, prediction, clip, generator), None
    for i, t in enumerate(tqdm(ts, desc=f"{k.label} sampling", disable=not progress)):
        out = model(x, torch.full((shape[0],), t, device=device, dtype=torch.long))
        t_prev = ts[i + 1] if i + 1 < len(ts) else -1
        step, state = k.step(s, out, t, t_prev, x, state, args)
        x = step.prev_sample
        yield step


@torch.inference_mode()
def sample(model: Model, s: DiffusionSchedule, shape: tuple[int, ...], **kwargs) -> torch.Tensor:
    """Run ``sample_progressive`` to the end and return x_0 in the model's data range."""
    last = deque(sample_progressive(model, s, shape, **kwargs), maxlen=1)  # keeps one step only
    return last[0].prev_sample


@dataclass(frozen=True)
class SampleRequest:
    """One request for ``n`` samples, as Serve receives it and as the jobs' grids ask for it:
    the sampler's settings, a seed, and for a class-conditional model a digit per image
    (None: unconditional rows) with the guidance weight w."""

    n: int
    sampler: str = DEFAULT_SAMPLER
    steps: int | None = None  # None: the sampler's default
    eta: float = 0.0
    seed: int = 0
    labels: tuple[int, ...] | None = None
    guidance: float = 0.0

    @property
    def kind(self) -> SamplerKind:
        return kind(self.sampler)

    def batch_key(self) -> tuple:
        """Requests that can share one model call: the same sampler settings. Settings the
        sampler ignores are left out (DDPM has no steps, only DDIM has eta), so they do not split
        a batch; labels and guidance are per row, so they never do."""
        k = self.kind
        return (self.sampler, self.steps if k.default_steps else None,
                self.eta if k.uses_eta else None)

    @property
    def guided(self) -> bool:
        return self.labels is not None and self.guidance > 0

    def cost(self, s: DiffusionSchedule) -> int:
        """Images x network calls on schedule ``s`` (a guided image runs twice the rows)."""
        return self.n * self.kind.calls_per_image(self.steps, s, self.guided)


def batch_rows(requests: list[SampleRequest],
               null_label: int | None) -> tuple[torch.Tensor | None, torch.Tensor | float]:
    """The labels and guidance weights of the rows of ``requests`` sampled as one batch.

    A row with a label is guided with its request's w; a row without one (an unconditional
    request to a conditional model) takes the null label and w = 0: one network row, not two,
    since guiding the null label by itself changes nothing. An unconditional model (``null_label``
    None) takes no labels at all."""
    if null_label is None:
        if any(r.labels is not None for r in requests):
            raise HW4Error("this DDPM is unconditional: it takes no labels")
        return None, 0.0
    labels = [c for r in requests for c in (r.labels if r.labels is not None else [null_label] * r.n)]
    weights = [r.guidance if r.labels is not None else 0.0 for r in requests for _ in range(r.n)]
    return torch.tensor(labels, dtype=torch.long), torch.tensor(weights)
