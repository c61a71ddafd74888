"""Shared pieces of the latent protocols: running the CALM autoencoder in batches, and the fixed
linear map from its means ``mu`` to a ``d``-dimensional code (per-dimension standardisation,
flattening, optional PCA), all fitted on training passages.

Dim letters: B passages, L tokens, N = L/K chunks, l latent size, D = N*l, d code size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["LatentBasis", "autoencoder_dims", "decode_latents", "encode_means"]

# the std floor of a (collapsed) latent dimension, so standardising never divides by zero
STD_FLOOR = 1e-6
# logits held in memory at once by decode_latents: B_chunk * L * V <= this many floats
MAX_LOGITS = 1 << 25


def autoencoder_dims(autoencoder: Any) -> tuple[int, int, int]:
    """``(K, l, V)`` from an autoencoder's ``config`` (``K``, ``latent_dim``, ``vocab_size``)."""
    c = autoencoder.config
    return int(c.K), int(c.latent_dim), int(c.vocab_size)


def _device(autoencoder: Any) -> torch.device:
    try:
        return next(autoencoder.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def encode_means(autoencoder: Any, ids: np.ndarray, *, batch_size: int) -> np.ndarray:
    """Posterior means of every chunk: ``ids (B, L)`` -> ``mu (B, L/K, l)`` float64.

    Runs the encoder in inference mode, ``batch_size`` passages at a time, on the model's device.
    """
    device = _device(autoencoder)
    out = []
    with torch.inference_mode():
        for start in range(0, ids.shape[0], batch_size):
            batch = torch.as_tensor(ids[start : start + batch_size], dtype=torch.long, device=device)
            mu, _ = autoencoder.encode(batch)
            out.append(mu.float().cpu().numpy())
    return np.concatenate(out, axis=0).astype(np.float64)


def decode_latents(autoencoder: Any, mu: np.ndarray) -> np.ndarray:
    """Greedy tokens of latent vectors: ``mu (B, N, l)`` -> ids ``(B, N*K)`` int64."""
    K, _, V = autoencoder_dims(autoencoder)
    B, N, _ = mu.shape
    device = _device(autoencoder)
    dtype = next(autoencoder.parameters()).dtype
    rows = max(1, MAX_LOGITS // (N * K * V))
    out = []
    with torch.inference_mode():
        for start in range(0, B, rows):
            z = torch.as_tensor(mu[start : start + rows], dtype=dtype, device=device)
            out.append(autoencoder.decode(z).argmax(-1).cpu().numpy())
    return np.concatenate(out, axis=0).astype(np.int64)


class LatentBasis:
    """Fixed map ``mu (B, N, l)`` -> code ``(B, d)``: standardise each of the ``l`` latent dims
    (mean/std over all training chunks), flatten to ``D = N*l``, then, when ``d < D``, project on
    the top-``d`` principal components of the training codes. ``inverse`` is the least-squares
    reconstruction (exact when ``d == D``)."""

    def __init__(self) -> None:
        self.mean: np.ndarray | None = None  # (l,)
        self.std: np.ndarray | None = None  # (l,)
        self.pca_mean: np.ndarray | None = None  # (D,), empty without PCA
        self.components: np.ndarray | None = None  # (D, d), empty without PCA

    @property
    def uses_pca(self) -> bool:
        return self.components is not None and self.components.size > 0

    def fit(self, mu: np.ndarray, d: int) -> np.ndarray:
        """Fit on training means ``mu (M, N, l)`` for a code of ``d <= N*l`` dims.

        Standardisation uses every passage. PCA uses the even-indexed passages only, and the
        odd-indexed ones are returned for calibrating what follows (power scale, quantiser range):
        the top sample principal components overstate their variance on the very data they were
        fitted on (most when the spectrum is flat, as a KL-regularised latent's is: several percent
        at D/M = 0.04), so statistics measured there would be biased against new passages.

        Returns:
            ``mu`` of the passages to calibrate on: the odd-indexed half with PCA, else all of them.
        """
        M, N, ell = mu.shape
        D = N * ell
        if not 1 <= d <= D:
            raise ValueError(f"code size d must be in [1, D={D}], got {d}")
        flat = mu.reshape(M * N, ell)
        self.mean = flat.mean(axis=0)
        self.std = np.maximum(flat.std(axis=0), STD_FLOOR)
        if d == D:
            self.pca_mean = np.zeros(0)
            self.components = np.zeros((0, 0))
            return mu
        if M < 2 * d:
            raise ValueError(
                f"PCA to {d} dims needs >= {2 * d} training passages (half fit the basis, half calibrate), got {M}"
            )
        x = self._standardise(mu[0::2])  # (M/2, D)
        self.pca_mean = x.mean(axis=0)
        xc = x - self.pca_mean
        # eigenvectors of the D x D covariance, largest variance first
        _, evecs = np.linalg.eigh(xc.T @ xc / len(xc))
        self.components = np.ascontiguousarray(evecs[:, ::-1][:, :d])
        return mu[1::2]

    def _standardise(self, mu: np.ndarray) -> np.ndarray:
        B = mu.shape[0]
        return ((mu - self.mean) / self.std).reshape(B, -1)  # (B, D)

    def forward(self, mu: np.ndarray) -> np.ndarray:
        """``mu (B, N, l)`` -> code ``(B, d)`` float64."""
        x = self._standardise(mu)
        if self.uses_pca:
            x = (x - self.pca_mean) @ self.components
        return x

    def inverse(self, code: np.ndarray, N: int) -> np.ndarray:
        """code ``(B, d)`` -> ``mu (B, N, l)`` float64."""
        B = code.shape[0]
        x = code @ self.components.T + self.pca_mean if self.uses_pca else code
        return x.reshape(B, N, -1) * self.std + self.mean

    def stats(self) -> dict[str, np.ndarray]:
        return {
            "latent_mean": self.mean,
            "latent_std": self.std,
            "pca_mean": self.pca_mean,
            "pca_components": self.components,
        }

    def set_stats(self, stats: dict[str, np.ndarray]) -> None:
        self.mean = stats["latent_mean"]
        self.std = stats["latent_std"]
        self.pca_mean = stats["pca_mean"]
        self.components = stats["pca_components"]
