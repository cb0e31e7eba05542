"""The DDPM U-Net of the homework: contracting path, middle block, expansive path with skips.

Building blocks: sinusoidal time embedding + MLP, ResNet blocks (GroupNorm, SiLU, time-embedding
injection, 1x1 residual projection when channels change) and attention blocks (GroupNorm,
multi-head self-attention written from scratch, feed-forward).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class UNetConfig:
    in_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one level each; all but the last downsample
    num_res_blocks: int = 1  # per level on the contracting path (the expansive path has one more)
    # downsample factors at which attention blocks run (1 = full size, 2 = half, 4 = quarter),
    # as improved-diffusion's ``attention_resolutions``; the middle block always attends.
    attention_resolutions: tuple[int, ...] = (4,)
    num_heads: int = 4
    dropout: float = 0.1
    groups: int = 8  # GroupNorm groups; must divide every channel count
    # class conditioning: labels 0..num_classes-1 plus one extra "null" label (= num_classes)
    # for classifier-free guidance; None is the unconditional model of older checkpoints
    num_classes: int | None = None

    def __post_init__(self) -> None:
        self.channel_mults = tuple(self.channel_mults)
        self.attention_resolutions = tuple(self.attention_resolutions)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer position encoding of timesteps: (N,) -> (N, dim).

    emb[:, i] = sin(t * w_i) and emb[:, half + i] = cos(t * w_i), w_i = max_period^(-i / half).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (N, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (N, 2*half)
    return F.pad(emb, (0, dim % 2))  # odd dim: a zero column


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention from scratch: q/k/v projections, softmax(qk^T/sqrt(d)) v, heads."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.unflatten(-1, (self.num_heads, c // self.num_heads)).transpose(1, 2)  # (B, h, T, hs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C)."""
        b, n, c = x.shape
        # q, k and v in one matmul: the three projections stacked as one (3C, C) weight
        w = torch.cat([self.q.weight, self.k.weight, self.v.weight])
        bias = torch.cat([self.q.bias, self.k.bias, self.v.bias])
        q, k, v = (self.split_heads(p) for p in F.linear(x, w, bias).split(c, dim=-1))  # (B, h, T, hs)
        # scale q (T * hs numbers) rather than the scores (T * T): same math, fewer multiplies
        scores = (q * (1 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (B, h, T, T)
        weights = torch.softmax(scores, dim=-1)
        y = weights @ v  # (B, h, T, hs)
        y = y.transpose(1, 2).reshape(b, n, c)  # (B, T, C): heads side by side
        return self.out(y)


class AttentionBlock(nn.Module):
    """x + MHA(GN(x)), then + FF(GN(.)), on the H*W positions of a feature map."""

    def __init__(self, channels: int, num_heads: int, groups: int, ff_mult: int = 4):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.attn = MultiHeadAttention(channels, num_heads)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.ff = nn.Sequential(
            nn.Linear(channels, ff_mult * channels), nn.GELU(), nn.Linear(ff_mult * channels, channels)
        )

    @staticmethod
    def tokens(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, HW, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x = x + self.attn(self.tokens(self.norm1(x))).transpose(1, 2).view(b, c, h, w)
        return x + self.ff(self.tokens(self.norm2(x))).transpose(1, 2).view(b, c, h, w)


class ResnetBlock(nn.Module):
    """GN-SiLU-conv, + time embedding, GN-SiLU-dropout-conv, + (1x1-projected) input."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, dropout: float, groups: int):
        super().__init__()
        self.block1 = nn.Sequential(
            nn.GroupNorm(groups, in_ch), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1)
        )
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, out_ch))
        self.block2 = nn.Sequential(
            nn.GroupNorm(groups, out_ch), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x) + self.time(temb)[:, :, None, None]  # (B, out, H, W)
        return self.block2(h) + self.skip(x)


class Level(nn.Module):
    """ResNet blocks, each followed by attention when this resolution attends."""

    def __init__(self, channels: list[tuple[int, int]], attend: bool, cfg: UNetConfig, tdim: int):
        super().__init__()
        self.res = nn.ModuleList(
            ResnetBlock(i, o, tdim, cfg.dropout, cfg.groups) for i, o in channels
        )
        self.attn = nn.ModuleList(
            AttentionBlock(o, cfg.num_heads, cfg.groups) if attend else nn.Identity()
            for _, o in channels
        )


class UNet(nn.Module):
    """eps/x0/v-prediction network: (x_t (B,C,H,W), t (B,)) -> (B,C,H,W). H, W divisible by 2^(L-1)
    is not required: upsampling matches each skip's size."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        # the activations' layout, a choice of the run and not of the weights:
        # ``hw4.precision.channels_last`` says where NHWC pays off
        self.channels_last = False
        ch = cfg.base_channels
        tdim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        # the label joins the time embedding (improved-diffusion's ``label_emb``): every ResNet
        # block then sees "which step and which class" through the same projection
        self.label_emb = nn.Embedding(cfg.num_classes + 1, tdim) if cfg.num_classes else None
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        # 1. contracting path: remember every output channel count for the skips
        self.down, self.downsample, skips = nn.ModuleList(), nn.ModuleList(), [ch]
        cur = ch
        for lvl, mult in enumerate(cfg.channel_mults):
            pairs = []
            for _ in range(cfg.num_res_blocks):
                pairs.append((cur, ch * mult))
                cur = ch * mult
                skips.append(cur)
            self.down.append(Level(pairs, 2**lvl in cfg.attention_resolutions, cfg, tdim))
            last = lvl == len(cfg.channel_mults) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(cur, cur, 3, 2, 1))
            if not last:
                skips.append(cur)

        # 2. middle block
        self.mid1 = ResnetBlock(cur, cur, tdim, cfg.dropout, cfg.groups)
        self.mid_attn = AttentionBlock(cur, cfg.num_heads, cfg.groups)
        self.mid2 = ResnetBlock(cur, cur, tdim, cfg.dropout, cfg.groups)

        # 3. expansive path: each block eats one skip
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for lvl, mult in reversed(list(enumerate(cfg.channel_mults))):
            pairs = []
            for _ in range(cfg.num_res_blocks + 1):
                pairs.append((cur + skips.pop(), ch * mult))
                cur = ch * mult
            self.up.append(Level(pairs, 2**lvl in cfg.attention_resolutions, cfg, tdim))
            self.upsample.append(nn.Conv2d(cur, cur, 3, padding=1) if lvl else nn.Identity())

        self.out = nn.Sequential(
            nn.GroupNorm(cfg.groups, cur), nn.SiLU(), nn.Conv2d(cur, cfg.in_channels, 3, padding=1)
        )

    @property
    def null_label(self) -> int | None:
        """The label that means "no class" (classifier-free guidance); None when unconditional."""
        return self.config.num_classes

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``y`` (B,) long: class labels, ``null_label`` for "unconditional"; None means all null.
        An unconditional model refuses labels rather than silently ignoring them."""
        emb = sinusoidal_embedding(t, self.config.base_channels).to(self.conv_in.weight.dtype)
        temb = self.time_mlp(emb)  # (B, tdim)
        if self.label_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), self.config.num_classes, device=x.device, dtype=torch.long)
            temb = temb + self.label_emb(y)  # (B, tdim)
        elif y is not None:
            raise ValueError("this U-Net is unconditional (num_classes=None): it takes no labels")
        h = self.conv_in(x)
        if self.channels_last:  # set after conv_in: a one-channel input is both layouts at once,
            h = h.contiguous(memory_format=torch.channels_last)  # and conv_in keeps it NCHW
        hs = [h]
        for level, down in zip(self.down, self.downsample, strict=True):
            for res, attn in zip(level.res, level.attn, strict=True):
                h = attn(res(h, temb))
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)
        for level, up in zip(self.up, self.upsample, strict=True):
            for res, attn in zip(level.res, level.attn, strict=True):
                h = attn(res(torch.cat([h, hs.pop()], dim=1), temb))
            if not isinstance(up, nn.Identity):
                # nearest-neighbour upsampling to the next skip's size, then a conv
                h = up(F.interpolate(h, size=hs[-1].shape[-2:], mode="nearest"))
        return self.out(h).contiguous()  # NCHW, whatever the layout inside
