"""Encoders, decoders and heads of the RSSM world model (PlaNet's architecture, Hafner et al. 2019)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["MLP", "ConvEncoder", "ConvDecoder", "preprocess_image", "postprocess_image"]


class MLP(nn.Module):
    """A feed-forward network `[*, in_dim] -> [*, out_dim]` with ELU hidden layers (PlaNet's dense stacks).

    Args:
        in_dim: input features.
        out_dim: output features.
        hidden: units of every hidden layer (PlaNet: 200).
        layers: number of hidden layers.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 200, layers: int = 2) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        d = in_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.ELU()]
            d = hidden
        mods.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        """`[*, in_dim] -> [*, out_dim]`."""
        return self.net(x)


def preprocess_image(image: Tensor, bits: int = 5, *, noise: torch.Generator | bool | None = None) -> Tensor:
    """`uint8 [*, 3, H, W]` in 0..255 -> float in [-0.5, 0.5), quantised to `bits` bits as in PlaNet.

    With `noise` (True or a generator), uniform dequantisation noise of one bin is added
    (used for training; PlaNet does the same).

    Raises:
        ValueError: if `image` is not uint8.
    """
    if image.dtype != torch.uint8:
        raise ValueError(f"preprocess_image: expected a uint8 image, got {image.dtype}")
    bins = 2**bits
    x = torch.floor(image.float() / 2 ** (8 - bits)) / bins - 0.5
    if noise is not None and noise is not False:
        gen = noise if isinstance(noise, torch.Generator) else None
        x = x + torch.rand(x.shape, generator=gen, device=x.device) / bins
    return x


def postprocess_image(x: Tensor) -> Tensor:
    """Inverse of `preprocess_image`: float `[*, 3, H, W]` around [-0.5, 0.5) -> `uint8` 0..255."""
    return ((x + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)


class ConvEncoder(nn.Module):
    """PlaNet's image encoder: four 4x4 stride-2 ReLU convolutions (32, 64, 128, 256 channels).

    `[N, 3, 64, 64]` (preprocessed floats) -> `[N, 1024]`.
    """

    out_dim = 1024

    def __init__(self, depth: int = 32) -> None:
        super().__init__()
        d = depth
        self.net = nn.Sequential(
            nn.Conv2d(3, d, 4, 2), nn.ReLU(),
            nn.Conv2d(d, 2 * d, 4, 2), nn.ReLU(),
            nn.Conv2d(2 * d, 4 * d, 4, 2), nn.ReLU(),
            nn.Conv2d(4 * d, 8 * d, 4, 2), nn.ReLU(),
            nn.Flatten(),
        )
        self.out_dim = 8 * d * 2 * 2

    def forward(self, x: Tensor) -> Tensor:
        """`[N, 3, 64, 64] -> [N, 1024]`."""
        return self.net(x)


class ConvDecoder(nn.Module):
    """PlaNet's image decoder: a dense layer to 1024 then transposed convolutions (5, 5, 6, 6 kernels).

    `[N, F]` latent features -> `[N, 3, 64, 64]` image means (unit-variance Gaussian).
    """

    def __init__(self, in_dim: int, depth: int = 32) -> None:
        super().__init__()
        d = depth
        self.fc = nn.Linear(in_dim, 32 * d)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(32 * d, 4 * d, 5, 2), nn.ReLU(),
            nn.ConvTranspose2d(4 * d, 2 * d, 5, 2), nn.ReLU(),
            nn.ConvTranspose2d(2 * d, d, 6, 2), nn.ReLU(),
            nn.ConvTranspose2d(d, 3, 6, 2),
        )

    def forward(self, features: Tensor) -> Tensor:
        """`[N, F] -> [N, 3, 64, 64]`."""
        x = self.fc(features)
        return self.net(x[:, :, None, None])
