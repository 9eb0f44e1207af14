"""The Swin Transformer stages of MANIQA (families/maniqa.py), as the released models/swin.py builds them.

Liu et al.'s Swin block (window attention with a relative position bias, every second block on
windows shifted cyclically by half a window, with the attention mask of the shifted regions), grouped
as MANIQA groups it: a `BasicLayer` is `depth` Swin blocks followed by a 3x3 convolution and a ReLU
on the token grid, and `SwinTransformer` applies Dropout to its input and then, for each layer,
x = scale * layer(x) + x. Module names, parameter and buffer keys and shapes are those of the
release, so its state_dicts load strictly; that includes `SwinTransformer.downsample`, a stride-2
convolution the release builds and never calls.

What the release builds and never changes is left out: its Dropout(p=0) modules inside the blocks
(MANIQA passes `dropout=0.`; they hold no state). DropPath (stochastic depth, linspace(0, 0.1) over
the blocks of one SwinTransformer) is written here, so that this file needs no timm.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

MASKED = -100.0  # the release's attention logit offset between tokens of different shifted regions
DROP_PATH_RATE = 0.1  # the release's stochastic depth at the last block of a SwinTransformer
INPUT_DROPOUT = 0.1  # the release's Dropout on the input of a SwinTransformer (its `drop`)


class DropPath(nn.Module):
    """Stochastic depth: in training, each sample's branch is zeroed with probability `p` and the
    others scaled by 1 / (1 - p); the identity in eval mode (or with p = 0)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """Linear -> GELU -> Linear on tokens (..., dim), hidden width `hidden` (MANIQA's dim_mlp)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/window * W/window, window * window, C): the tokens of each window, windows
    in row-major order per image."""
    batch, height, width, channels = x.shape
    x = x.reshape(batch, height // window, window, width // window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window, channels)


def window_reverse(windows: torch.Tensor, window: int, height: int, width: int) -> torch.Tensor:
    """The inverse of `window_partition`: (B * nW, window * window, C) -> (B, H, W, C)."""
    channels = windows.shape[-1]
    x = windows.reshape(-1, height // window, width // window, window, window, channels)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, height, width, channels)


def relative_position_index(window: int) -> torch.Tensor:
    """(window^2, window^2) int64: for tokens i, j of a window, the row of the bias table holding
    their relative offset (dy, dx), i.e. (dy + window - 1) * (2 window - 1) + dx + window - 1."""
    rows, cols = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    coords = torch.stack((rows.flatten(), cols.flatten()))  # (2, window^2)
    offsets = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, window^2, window^2), from 0
    return offsets[0] * (2 * window - 1) + offsets[1]


def shifted_window_mask(height: int, width: int, window: int, shift: int) -> torch.Tensor:
    """(nW, window^2, window^2) float32 attention offsets for windows shifted by `shift`: 0 between
    tokens of the same region of the cyclically shifted grid, MASKED between tokens of different ones."""
    regions = torch.zeros(height, width)
    bounds = ((0, -window), (-window, -shift), (-shift, None))
    label = 0
    for top, bottom in bounds:
        for left, right in bounds:
            regions[top:bottom, left:right] = label
            label += 1
    windows = window_partition(regions.view(1, height, width, 1), window).squeeze(-1)  # (nW, window^2)
    different = windows[:, None, :] != windows[:, :, None]
    return torch.zeros(different.shape).masked_fill_(different, MASKED)


class WindowAttention(nn.Module):
    """Multi-head self-attention within each window, with a learned relative position bias.

    forward: tokens (B * nW, window^2, dim) and optionally a mask (nW, window^2, window^2) added to
    the logits -> (B * nW, window^2, dim).
    """

    def __init__(self, dim: int, window: int, heads: int):
        super().__init__()
        self.dim, self.window, self.heads = dim, window, heads
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)  # timm's bounds: -2, 2 (absolute)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        windows, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(windows, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]  # each (B * nW, heads, tokens, head_dim)
        logits = q @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        logits = logits + bias.view(tokens, tokens, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            count = mask.shape[0]
            logits = logits.view(windows // count, count, self.heads, tokens, tokens) + mask[None, :, None]
            logits = logits.view(windows, self.heads, tokens, tokens)
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(windows, tokens, dim)
        return self.proj(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window={self.window}, heads={self.heads}"


class SwinBlock(nn.Module):
    """A Swin block on tokens (B, H*W, dim) of an H x W grid: x + drop_path(W-MSA(norm1(x))), then
    x + drop_path(mlp(norm2(x))); windows shifted cyclically by `shift` when it is > 0 (with the
    buffer `attn_mask`). A grid no larger than the window is one unshifted window, as released."""

    def __init__(self, dim: int, resolution: tuple[int, int], heads: int, window: int, shift: int,
                 dim_mlp: int, drop_path: float):
        super().__init__()
        if min(resolution) <= window:
            window, shift = min(resolution), 0
        if not 0 <= shift < window:
            raise ValueError(f"the shift must be in [0, window size {window}), got {shift}")
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim_mlp)
        self.register_buffer("attn_mask", shifted_window_mask(*resolution, window, shift) if shift else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = self.resolution
        batch, tokens, dim = x.shape
        if tokens != height * width:
            raise ValueError(f"a Swin block of a {height}x{width} grid got {tokens} tokens")
        grid = self.norm1(x).view(batch, height, width, dim)
        if self.shift:
            grid = torch.roll(grid, shifts=(-self.shift, -self.shift), dims=(1, 2))
        windows = self.attn(window_partition(grid, self.window), self.attn_mask)
        grid = window_reverse(windows, self.window, height, width)
        if self.shift:
            grid = torch.roll(grid, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + self.drop_path(grid.reshape(batch, tokens, dim))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BasicLayer(nn.Module):
    """`depth` Swin blocks (shift 0, window // 2, 0, ...) then a 3x3 convolution (dim -> dim) and a
    ReLU on the grid: tokens (B, H*W, dim) -> (B, H*W, dim)."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, heads: int, window: int, dim_mlp: int,
                 drop_paths: Sequence[float]):
        super().__init__()
        self.resolution = resolution
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)
        self.blocks = nn.ModuleList([SwinBlock(dim, resolution, heads, window, 0 if i % 2 == 0 else window // 2,
                                               dim_mlp, drop_paths[i]) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        batch, tokens, dim = x.shape
        grid = x.transpose(1, 2).reshape(batch, dim, *self.resolution)  # (B, dim, H, W)
        return F.relu(self.conv(grid)).flatten(2).transpose(1, 2)


class SwinTransformer(nn.Module):
    """MANIQA's Swin stage on a feature map (B, dim, H, W) -> (B, dim, H, W): Dropout(INPUT_DROPOUT),
    then for each of `len(depths)` BasicLayers x = scale * layer(x) + x on the tokens."""

    def __init__(self, resolution: tuple[int, int], dim: int, depths: Sequence[int], heads: Sequence[int],
                 window: int, dim_mlp: int, scale: float):
        super().__init__()
        self.resolution, self.scale = tuple(resolution), scale
        self.dropout = nn.Dropout(INPUT_DROPOUT)
        self.downsample = nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1)  # built, never used (released)
        rates = torch.linspace(0, DROP_PATH_RATE, sum(depths)).tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList([
            BasicLayer(dim, self.resolution, depth, heads[i], window, dim_mlp, rates[start:start + depth])
            for i, (depth, start) in enumerate(zip(depths, starts))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, dim = x.shape[:2]
        x = self.dropout(x).flatten(2).transpose(1, 2)  # (B, H*W, dim)
        for layer in self.layers:
            x = self.scale * layer(x) + x
        return x.transpose(1, 2).reshape(batch, dim, *self.resolution)
