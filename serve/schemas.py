"""The HTTP contract of the Serve app: request bodies with their bounds, and the limits."""

import base64
import copy
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hw4 import samplers
from hw4.adversarial import ATTACKS
from hw4.adversarial.registry import AttackOptions
from hw4.errors import HW4Error
from hw4.guidance import GUIDANCE_INTERVAL
from hw4.vae_attacks import ATTACK_TARGETS

MAX_SAMPLE_IMAGES = 64  # per DDPM request, and the most images one DDPM batch holds
# Cost budgets, checked before any work starts (docs/performance.md, "Serve limits", has the timings):
# a sample request costs images x network calls (steps; all T for DDPM; twice with guidance), an
# attack images x epsilons x models x model calls per image (hw4.adversarial's registry: steps
# times EOT samples, APGD-T's targets, Square's queries).
MAX_SAMPLE_COST = 16_384  # DDPM-1000 on 16 images; a guided DDIM-50 grid of 64 is 6,400
MAX_ATTACK_COST = 200_000  # AutoAttack (standard: 6,010 calls an image) on 32 images, 1 eps, 1 model
MAX_GUIDANCE = 10.0
MAX_TEST_IMAGES = 256
MAX_UPLOADS = 64
Format = Literal["png", "json"]


class PngImage(BaseModel):
    """A base64 PNG of any size up to 1024 px a side, made grey 28x28."""

    model_config = ConfigDict(extra="forbid")
    png_base64: str = Field(max_length=2_000_000, json_schema_extra={
        "contentEncoding": "base64", "contentMediaType": "image/png"})


class PixelImage(BaseModel):
    """A 28x28 grid of values in [0, 1]."""

    model_config = ConfigDict(extra="forbid")
    pixels: list[Annotated[list[Annotated[float, Field(ge=0, le=1)]],
                           Field(min_length=28, max_length=28)]] = Field(
        min_length=28, max_length=28, description="28 rows of 28 values in [0, 1]")


class IndexImage(BaseModel):
    """The index of a Fashion-MNIST test image."""

    model_config = ConfigDict(extra="forbid")
    test_index: int = Field(ge=0, le=9999)


# One image has exactly one source; a request's images are all test images or all uploads. Both
# rules are in the schema's types, so a generated body either follows them or is a 422.
Upload = PngImage | PixelImage
ImageIn = Upload | IndexImage
Images = Annotated[list[IndexImage], Field(min_length=1, max_length=MAX_UPLOADS)] | Annotated[
    list[Upload], Field(min_length=1, max_length=MAX_UPLOADS)]


def image_spec(images: list[ImageIn], labels: list[int] | None = None) -> dict:
    """What the VAE replica needs to rebuild the images: all test indices, or all uploads (a
    request's ``Images`` are one kind or the other)."""
    if all(isinstance(i, IndexImage) for i in images):
        return {"test_indices": [i.test_index for i in images]}
    return {"uploads": [("png", i.png_base64) if isinstance(i, PngImage) else ("pixels", i.pixels)
                        for i in images], "labels": labels}


Digit = Annotated[int, Field(ge=0, le=9)]
SAMPLER_HELP = "; ".join(f"{k.name}: {k.label}" + (f" (default {k.default_steps} network calls)"
                                                    if k.default_steps else " (all T steps)")
                         for k in samplers.SAMPLERS.values())


class DDPMSampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(16, ge=1, le=MAX_SAMPLE_IMAGES, description="images to draw")
    sampler: Literal[samplers.NAMES] = Field(  # type: ignore[valid-type]
        samplers.DEFAULT_SAMPLER, description=f"the sampler: {SAMPLER_HELP}")
    steps: int | None = Field(None, ge=1, le=1000,
                              description="network calls (default: the sampler's own); DDPM "
                                          "always takes all T")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM's noise: 0 deterministic, 1 "
                                                         "DDPM-like; the other samplers ignore it")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    labels: Digit | list[Digit] | None = Field(
        None, description="class-conditional model: one digit for every image, one digit per "
                          "image (n of them), or none for unconditional samples")
    guidance: float = Field(1.0, ge=0.0, le=MAX_GUIDANCE,
                            description="classifier-free guidance weight w, used with labels: "
                                        "(1 + w) eps(x, c) - w eps(x, null), at the noise levels "
                                        f"{GUIDANCE_INTERVAL[0]:g} T <= t <= "
                                        f"{GUIDANCE_INTERVAL[1]:g} T; 0 = no guidance")
    nrow: int = Field(8, ge=1, le=MAX_SAMPLE_IMAGES, description="images per row of the PNG grid")
    format: Format = "png"

    @model_validator(mode="after")
    def one_label_per_image(self) -> "DDPMSampleIn":
        if isinstance(self.labels, list) and len(self.labels) != self.n:
            raise ValueError(f"labels: one digit per image ({self.n}), got {len(self.labels)}")
        return self

    def request(self) -> samplers.SampleRequest:
        labels = [self.labels] * self.n if isinstance(self.labels, int) else self.labels
        steps = self.steps if self.steps is not None else samplers.kind(self.sampler).default_steps
        return samplers.SampleRequest(self.n, self.sampler, steps, self.eta, self.seed,
                                      tuple(labels) if labels is not None else None, self.guidance)


class DDPMStreamIn(DDPMSampleIn):
    """``/ddpm/sample/stream``: the same request, answered step by step."""

    preview_every: int | None = Field(None, ge=1, le=1000,
                                      description="an x-hat-0 preview after the first network "
                                                  "call, then every k (default: about 20 "
                                                  "previews per chain)")


class VAESampleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = Field(16, ge=1, le=MAX_TEST_IMAGES)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    format: Format = "png"


class ImageRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: ImageIn
    format: Format = "png"


class ClassifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: Images


MAX_LATENT = 512  # the largest latent size the routes accept (the served VAE's own is in /info)
LatentDim = Annotated[int, Field(ge=0, lt=MAX_LATENT)]
LatentValue = Annotated[float, Field(ge=-10, le=10)]


class TraverseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: ImageIn
    dims: list[LatentDim] = Field([0, 1, 2, 3], min_length=1, max_length=32,
                                  description="latent dimensions, each below the served latent size")
    low: float = Field(-3.0, ge=-10, le=10)
    high: float = Field(3.0, ge=-10, le=10)
    steps: int = Field(9, ge=2, le=21)
    format: Format = "png"

    @model_validator(mode="after")
    def valid(self) -> "TraverseIn":
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class DecodeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    z: list[LatentValue] = Field(min_length=1, max_length=MAX_LATENT,
                                 description="a latent code: exactly the served latent size")
    format: Format = "png"


class AttackIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    attack: Literal[tuple(ATTACKS)] = Field("fgsm", description="; ".join(  # type: ignore[valid-type]
        f"{a.name}: {a.label}" for a in ATTACKS.values()))
    epsilons: list[Annotated[float, Field(ge=0, le=0.5)]] = Field(
        [0.0, 0.05, 0.1, 0.2], min_length=1, max_length=11,
        description="L-inf budgets in pixel units of [0, 1] images")
    models: list[Literal[ATTACK_TARGETS]] = Field(list(ATTACK_TARGETS), min_length=1)  # type: ignore[valid-type]
    images: Images | None = None
    labels: list[Digit] | None = Field(None, description="true classes of uploaded images, one "
                                                          "per image")
    n: int = Field(32, ge=1, le=MAX_TEST_IMAGES, description="test images, when no images given")
    start: int = Field(0, ge=0, le=9999, description="first test image, when no images given")
    targeted: bool = Field(False, description="aim at class (label + 1) mod 10")
    steps: int | None = Field(None, ge=1, le=100, description="gradient steps of PGD and APGD "
                                                              "(default: PGD 20, APGD 100)")
    pgd_steps: int | None = Field(None, ge=1, le=100, description="the older name of steps")
    targets: int = Field(9, ge=1, le=9, description="APGD-T: target classes per image")
    queries: int = Field(5000, ge=1, le=10_000, description="Square: model calls per image")
    eot: int = Field(1, ge=1, le=32, description="gradients averaged over this many forward passes")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    examples: int = Field(8, ge=0, le=16, description="adversarial images returned per eps")

    @model_validator(mode="after")
    def valid(self) -> "AttackIn":
        if self.labels is not None and (self.images is None or len(self.labels) != len(self.images)):
            raise ValueError("labels: one class in 0..9 per uploaded image")
        if self.cost() > MAX_ATTACK_COST:  # refused before any work starts
            raise ValueError(f"this attack costs {self.cost():,} model calls (images x epsilons x "
                             f"models x calls per image: {self.attack} takes "
                             f"{ATTACKS[self.attack].calls(self.options()):,} with these options, "
                             f"EOT samples included); the limit is {MAX_ATTACK_COST:,}: ask for "
                             "fewer images, epsilons, models, steps or EOT samples")
        return self

    def options(self) -> AttackOptions:
        return AttackOptions(steps=self.steps or self.pgd_steps, targets=self.targets,
                             queries=self.queries, eot=self.eot)

    def cost(self) -> int:
        """Images x epsilons x models x model calls per image (EOT samples included)."""
        images = len(self.images) if self.images is not None else self.n
        return images * len(self.epsilons) * len(self.models) * ATTACKS[self.attack].calls(self.options())


def b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError as err:
        raise HW4Error(f"png_base64 is not valid base64: {err}") from err


def state_latent_size(schema: dict, latent: int) -> dict:
    """A copy of the OpenAPI ``schema`` that states the served VAE's latent size: ``z`` of
    /vae/decode has exactly ``latent`` values and each of /vae/traverse's ``dims`` is below it,
    as the replica checks."""
    schema = copy.deepcopy(schema)  # FastAPI caches the one it built
    models = schema["components"]["schemas"]
    z = models["DecodeIn"]["properties"]["z"]
    z["minItems"] = z["maxItems"] = latent
    dims = models["TraverseIn"]["properties"]["dims"]
    dims["items"]["exclusiveMaximum"] = latent
    dims["maxItems"] = min(dims["maxItems"], latent)
    dims["default"] = [d for d in dims["default"] if d < latent]
    return schema
