"""The Serve app's reply bodies: image grids as PNG or JSON (base64 PNGs and their shape) and
server-sent events."""

import base64
import json
from typing import Any

import torch
from fastapi.responses import JSONResponse, Response

from hw4 import viz


def b64png(images: torch.Tensor, nrow: int = 8) -> str:
    return base64.b64encode(viz.png_bytes(images, nrow)).decode()


def image_reply(images: torch.Tensor, fmt: str, nrow: int = 8, **meta: Any) -> Response:
    """A PNG grid, or JSON with the grid and each image as base64 PNG plus ``meta``."""
    if fmt == "png":
        return Response(viz.png_bytes(images, nrow), media_type="image/png",
                        headers={f"x-hw4-{k.replace('_', '-')}": str(v) for k, v in meta.items()})
    return JSONResponse(image_json(images, nrow, **meta))


def image_json(images: torch.Tensor, nrow: int = 8, **meta: Any) -> dict:
    """The grid and each image as base64 PNG, their shape, and ``meta``."""
    return {"grid_png_base64": b64png(images, nrow),
            "images_png_base64": [b64png(im[None], 1) for im in images],
            "shape": list(images.shape), **meta}


def sse(event: str, data: dict) -> str:
    """One server-sent event: its name and one line of JSON."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"
