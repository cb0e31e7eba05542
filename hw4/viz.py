"""Image grids written atomically as PNG; images are [0, 1] tensors (N, C, H, W)."""

from __future__ import annotations

import io
import math
import os

import torch
from PIL import Image

from hw4.atomic_files import write_bytes_atomic
from hw4.errors import HW4Error


def make_grid(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """Tile (N, C, H, W) images into one (3, H', W') image, ``nrow`` per row, ``padding`` black
    pixels around each; grey images become RGB. The layout of ``torchvision.utils.make_grid``
    (a test compares them), without importing torchvision (about 1.5 s per process)."""
    if images.size(1) == 1:
        images = images.expand(-1, 3, -1, -1)
    if images.size(0) == 1:
        return images[0].clone()
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = images.new_zeros(c, rows * (h + padding) + padding, cols * (w + padding) + padding)
    for i, image in enumerate(images):
        top, left = (i // cols) * (h + padding) + padding, (i % cols) * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = image
    return grid


def grid_image(images: torch.Tensor, nrow: int = 8, padding: int = 2) -> Image.Image:
    grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow, padding=padding)
    array = grid.mul(255).round().byte().permute(1, 2, 0).numpy()  # (H, W, 3)
    return Image.fromarray(array)


def png_bytes(images: torch.Tensor, nrow: int = 8) -> bytes:
    buf = io.BytesIO()
    grid_image(images, nrow).save(buf, format="PNG")
    return buf.getvalue()


def save_grid(images: torch.Tensor, path: str | os.PathLike, nrow: int = 8) -> None:
    write_bytes_atomic(path, png_bytes(images, nrow))


MAX_UPLOAD_SIDE = 1024


def image_from_png(data: bytes, size: int = 28) -> torch.Tensor:
    """An uploaded PNG (any mode, up to ``MAX_UPLOAD_SIDE`` px a side) as a grey (1, 1, size, size)
    tensor in [0, 1], resized when it is not already ``size`` x ``size``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format != "PNG":
                raise HW4Error(f"expected a PNG image, got {im.format}")
            if max(im.size) > MAX_UPLOAD_SIDE:
                raise HW4Error(f"image is {im.size[0]}x{im.size[1]}; at most "
                               f"{MAX_UPLOAD_SIDE} px a side")
            grey = im.convert("L")
            if grey.size != (size, size):
                grey = grey.resize((size, size), Image.Resampling.BILINEAR)
            arr = torch.frombuffer(bytearray(grey.tobytes()), dtype=torch.uint8)
    except Image.DecompressionBombError as err:  # a header claiming e.g. 20000 x 20000 pixels
        raise HW4Error(f"image is too large to decode (at most {MAX_UPLOAD_SIDE} px a side): "
                       f"{err}") from err
    except (OSError, SyntaxError, ValueError) as err:  # PIL's ways of saying "not an image"
        raise HW4Error(f"not a readable PNG image: {err}") from err
    return arr.float().div(255).view(1, 1, size, size)


def image_from_pixels(pixels: list, size: int = 28) -> torch.Tensor:
    """A ``size`` x ``size`` nested list of grey values in [0, 1] as (1, 1, size, size)."""
    try:
        x = torch.tensor(pixels, dtype=torch.float32)
    except (ValueError, TypeError) as err:  # ragged rows
        raise HW4Error(f"pixels must be a {size}x{size} grid of numbers: {err}") from err
    if x.shape != (size, size):
        raise HW4Error(f"pixels must be {size}x{size}, got {'x'.join(map(str, x.shape))}")
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise HW4Error("pixels must be finite values in [0, 1]")
    return x.view(1, 1, size, size)


def pairs(originals: torch.Tensor, reconstructions: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    """Rows of ``nrow`` originals, each followed by a row of their reconstructions (2N, C, H, W)."""
    rows = []
    for start in range(0, originals.shape[0], nrow):
        rows += [originals[start:start + nrow], reconstructions[start:start + nrow]]
    return torch.cat(rows)


def trial_curves(curves: list[tuple[str, list[float], list[float], str]],
                 path: str | os.PathLike, *, xlabel: str, ylabel: str, title: str = "") -> None:
    """A sweep at a glance: one line per trial ``(label, xs, ys, status)``. Finished trials are
    solid, trials a scheduler stopped are dashed and end in a cross, failed ones are grey."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = pyplot().subplots(figsize=(7.2, 4.4), dpi=110)
    for label, xs, ys, status in curves:
        style = {"done": dict(ls="-", marker="o"), "stopped": dict(ls="--", marker="."),
                 "error": dict(ls=":", marker=".", color="grey")}[status]
        finite = [(x, y) for x, y in zip(xs, ys, strict=True) if math.isfinite(y)]
        note = status + (", diverged: not drawn" if len(finite) < len(xs) else "")
        (line,) = ax.plot([p[0] for p in finite], [p[1] for p in finite], ms=4,
                          label=f"{label} ({note})", **style)
        if status != "done" and finite:
            ax.plot(*finite[-1], marker="x", ms=9, mew=2, color=line.get_color())
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    save_figure(fig, path)


def pyplot():
    """matplotlib's pyplot, headless (the Agg backend): figures are only ever saved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


TIGHT = {"dpi": 110, "bbox_inches": "tight"}  # the homework figures' ``save_figure`` arguments


def save_figure(fig, path: str | os.PathLike, **savefig: object) -> None:
    """A matplotlib figure -> PNG at ``path``, atomically (``savefig``: more arguments of
    ``Figure.savefig``, e.g. dpi); the figure is closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig)
    plt.close(fig)
    write_bytes_atomic(path, buf.getvalue())


def line_plot(series: dict[str, tuple[list[float], list[float]]], path: str | os.PathLike, *,
              xlabel: str, ylabel: str, title: str = "",
              point_labels: dict[str, list[str]] | None = None, logy: bool = False) -> None:
    """One line per label (dashed when the label mentions PGD) saved as a PNG, atomically;
    ``point_labels[label]`` writes a text beside each point of that line."""
    fig, ax = pyplot().subplots(figsize=(6.4, 4.2), dpi=110)
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", ms=3, ls="--" if "pgd" in label.lower() else "-", label=label)
        for x, y, text in zip(xs, ys, (point_labels or {}).get(label, []), strict=False):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def image_rows(rows: list[torch.Tensor], path: str | os.PathLike, *, row_labels: list[str],
               col_labels: list[str] | None = None, title: str = "", cmap: str = "gray",
               vmin: float = 0.0, vmax: float = 1.0) -> None:
    """A grid of 28x28 images, one tensor (n, 1, 28, 28) per row, labelled rows and columns."""
    plt = pyplot()
    n_cols = max(len(r) for r in rows)
    height = 0.95 * len(rows) + 0.6
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(0.9 * n_cols + 1.4, height), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(row):
                ax.imshow(row[j, 0].detach().cpu().numpy(), cmap=cmap, vmin=vmin, vmax=vmax)
            else:
                ax.axis("off")
            if j == 0:
                ax.set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
            if col_labels and i == len(rows) - 1 and j < len(col_labels):
                ax.set_xlabel(col_labels[j], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(wspace=0.05, hspace=0.08, top=1 - 0.5 / height)  # the title, no gap
    save_figure(fig, path, **TIGHT)
