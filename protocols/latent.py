"""Shared pieces of the latent protocols: running the CALM autoencoder in batches, and the fixed
linear map from its means ``mu`` to a ``d``-dimensional code (per-dimension standardisation,
flattening, optional PCA), all fitted on training passages.

Dim letters: B passages, L tokens, N = L/K chunks, l latent size, D = N*l, d code size.
"""

from __future__ import annotations

import dataclasses
import weakref
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from protocols.base import Protocol
from protocols.saved import build_config, read_autoencoder_dims

__all__ = ["LatentBasis", "MeansCache", "autoencoder_dims", "decode_latents", "encode_means", "encoded_passages",
           "flat_means"]

# the std floor of a (collapsed) latent dimension, so standardising never divides by zero
STD_FLOOR = 1e-6
# logits held in memory at once by decode_latents: B_chunk * L * V <= this many floats
MAX_LOGITS = 1 << 25
# on a CPU, logits decoded at once: 4 MB that stay in cache for the argmax (1.6x faster than 128 MB pieces for
# the demo's 256 passages of 16 tokens at V = 8192, one thread)
CPU_LOGITS = 1 << 20
# tokens per encoder forward: (tokens, intermediate) activations small enough to stay in a CPU's cache
FORWARD_TOKENS = 4096
# the most bytes of posterior means MeansCache keeps per autoencoder
MEANS_CACHE_BYTES = 256 << 20
_ENCODED_PASSAGES = 0


def autoencoder_dims(autoencoder: Any) -> tuple[int, int, int]:
    """``(K, l, V)`` from an autoencoder's ``config`` (``K``, ``latent_dim``, ``vocab_size``)."""
    c = autoencoder.config
    return int(c.K), int(c.latent_dim), int(c.vocab_size)


def _device(autoencoder: Any) -> torch.device:
    try:
        return next(autoencoder.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def encode_means(autoencoder: Any, ids: np.ndarray, *, batch_size: int, cache: bool = False,
                 dtype: type = np.float64) -> np.ndarray:  # fmt: skip
    """Posterior means of every chunk: ``ids (B, L)`` -> ``mu (B, L/K, l)`` float64 (or ``dtype``; the encoder
    computes float32, so float32 loses nothing and skips a copy).

    Runs the encoder in inference mode on the model's device, once per distinct passage, in forwards of at
    most ``batch_size`` passages and about ``FORWARD_TOKENS`` tokens: a forward that large keeps its
    intermediates in the CPU's cache, which runs the tiny encoder at 1.8x the matmul rate of 1,024-passage
    forwards (``bench/channel_throughput.py``). Each row's mean does not depend on the rows beside it.

    With ``cache``, passages this autoencoder already encoded (in this process, with these weights) are not
    encoded again: a game's listener re-encodes the target the speaker encoded, and every trial of a sweep
    draws from the same test passages (``MeansCache``).
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if ids.shape[0] == 0:
        K, ell, _ = autoencoder_dims(autoencoder)
        return np.zeros((0, ids.shape[1] // K, ell), dtype=dtype)
    store = MeansCache.of(autoencoder) if cache else None
    keys = [row.tobytes() for row in ids]
    first: dict[bytes, int] = {}  # each passage not yet encoded -> its first row
    for i, key in enumerate(keys):
        if key not in first and (store is None or key not in store):
            first[key] = i
    fresh = _run_encoder(autoencoder, ids[list(first.values())], batch_size) if first else None
    if store is None and len(first) == len(keys):  # all distinct, nothing cached: the encoder's rows as they are
        return fresh.astype(dtype, copy=False)
    table = dict(zip(first, fresh)) if first else {}
    if store is not None:
        store.add(table)
        table = store
    return np.stack([table[key] for key in keys]).astype(dtype, copy=False)


def flat_means(autoencoder: Any, ids: np.ndarray, *, batch_size: int, cache: bool = False) -> np.ndarray:
    """``ids (N, L)`` -> float32 ``(N, L/K * l)``: every chunk's posterior mean (``encode_means``), flattened: the
    item features of the emergent pairs (``experiments.common.links.calm_features``, ``protocols.learned``)."""
    return encode_means(autoencoder, ids, batch_size=batch_size, cache=cache, dtype=np.float32).reshape(len(ids), -1)


def _run_encoder(autoencoder: Any, ids: np.ndarray, batch_size: int) -> np.ndarray:
    """The encoder's means ``(B, L/K, l)`` float32, in forwards of about ``FORWARD_TOKENS`` tokens."""
    global _ENCODED_PASSAGES
    device = _device(autoencoder)
    K, ell, _ = autoencoder_dims(autoencoder)
    rows = max(1, min(batch_size, FORWARD_TOKENS // max(1, ids.shape[1])))
    out = np.empty((ids.shape[0], ids.shape[1] // K, ell), dtype=np.float32)  # filled in place: no concatenation
    with torch.inference_mode():
        for start in range(0, ids.shape[0], rows):
            batch = torch.as_tensor(ids[start : start + rows], dtype=torch.long, device=device)
            mu, _ = autoencoder.encode(batch)
            out[start : start + rows] = mu.float().cpu().numpy()
    _ENCODED_PASSAGES += ids.shape[0]
    return out


def encoded_passages() -> int:
    """Passages the autoencoder encoder has run on in this process (cache hits and repeats not counted)."""
    return _ENCODED_PASSAGES


class MeansCache:
    """Posterior means an autoencoder already computed, by passage (its token ids' bytes), float32.

    One per autoencoder object, valid while its weights are the ones it was filled with (checked by the
    parameters' in-place version counters: a training step or ``load_state_dict`` empties it). When full
    (``MEANS_CACHE_BYTES``) it is emptied and filled again: the passages a sweep plays are far fewer.
    """

    _stores: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __init__(self, version: tuple[int, ...]) -> None:
        self.version = version
        self.means: dict[bytes, np.ndarray] = {}
        self.nbytes = 0

    @classmethod
    def of(cls, autoencoder: Any) -> MeansCache:
        """The cache of ``autoencoder`` (a fresh one when its weights changed since the last call)."""
        version = tuple(p._version for p in autoencoder.parameters())
        store = cls._stores.get(autoencoder)
        if store is None or store.version != version:
            store = cls._stores[autoencoder] = cls(version)
        return store

    @classmethod
    def clear_all(cls) -> None:
        """Forget every autoencoder's cache (a benchmark that times encoding from scratch)."""
        cls._stores.clear()

    def __contains__(self, key: bytes) -> bool:
        return key in self.means

    def __getitem__(self, key: bytes) -> np.ndarray:
        return self.means[key]

    def add(self, table: dict[bytes, np.ndarray]) -> None:
        size = sum(v.nbytes for v in table.values())
        if self.nbytes + size > MEANS_CACHE_BYTES:
            self.means.clear()
            self.nbytes = 0
        self.means.update(table)
        self.nbytes += size


def decode_latents(autoencoder: Any, mu: np.ndarray) -> np.ndarray:
    """Greedy tokens of latent vectors: ``mu (B, N, l)`` -> ids ``(B, N*K)`` int64."""
    K, _, V = autoencoder_dims(autoencoder)
    B, N, _ = mu.shape
    device = _device(autoencoder)
    dtype = next(autoencoder.parameters()).dtype
    rows = max(1, (MAX_LOGITS if device.type == "cuda" else CPU_LOGITS) // (N * K * V))
    out = []
    with torch.inference_mode():
        for start in range(0, B, rows):
            z = torch.as_tensor(mu[start : start + rows], dtype=dtype, device=device)
            out.append(autoencoder.decode(z).argmax(-1).cpu().numpy())
    return np.concatenate(out, axis=0).astype(np.int64)


def _torch(a: np.ndarray) -> torch.Tensor:
    """A numpy array as a CPU tensor sharing its memory. The basis's arithmetic runs in torch, on torch's threads:
    numpy's BLAS keeps threads of its own that spin after a call and took a 2-core machine from the encoder
    beside them (the encoder ran at 95 GFLOP/s after a numpy projection against 184 after none;
    bench/channel_throughput.py's games, issue 30)."""
    return torch.from_numpy(np.ascontiguousarray(a))


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
        """``mu (B, N, l)`` (float32 or float64) -> code ``(B, d)`` float64.

        The arithmetic of ``_standardise`` and the projection, in torch (see ``_torch``).
        """
        x = _torch(mu).to(torch.float64, copy=True)  # in place from here: one buffer of (B, D) doubles, not four
        x = x.sub_(_torch(self.mean)).div_(_torch(self.std)).reshape(mu.shape[0], -1)  # (B, D)
        if self.uses_pca:
            x = x.sub_(_torch(self.pca_mean)).matmul(_torch(self.components))
        return x.numpy()

    def inverse(self, code: np.ndarray, N: int) -> np.ndarray:
        """code ``(B, d)`` -> ``mu (B, N, l)`` float64."""
        B = code.shape[0]
        x = _torch(code).matmul(_torch(self.components.T)).numpy() + self.pca_mean if self.uses_pca else code
        return x.reshape(B, N, -1) * self.std + self.mean

    def stats(self) -> dict[str, np.ndarray]:
        return {
            "latent_mean": self.mean,
            "latent_std": self.std,
            "pca_mean": self.pca_mean,
            "pca_components": self.components,
        }

    @staticmethod
    def shapes(latent_dim: int, D: int, d: int) -> dict[str, tuple[int, ...]]:
        """The shapes ``stats`` has for latents of ``latent_dim`` and a code of ``d`` of ``D`` dims."""
        pca = d < D
        return {"latent_mean": (latent_dim,), "latent_std": (latent_dim,), "pca_mean": (D,) if pca else (0,),
                "pca_components": (D, d) if pca else (0, 0)}

    def set_stats(self, stats: dict[str, np.ndarray]) -> None:
        if not (stats["latent_std"] > 0).all():  # the standardisation divides by it
            raise ValueError("latent_std must be > 0 in every dimension")
        self.mean = stats["latent_mean"]
        self.std = stats["latent_std"]
        self.pca_mean = stats["pca_mean"]
        self.components = stats["pca_components"]


def check_chunked_length(L: int, K: int) -> int:
    """Validate a passage length for a K-token autoencoder: a positive multiple of K."""
    if isinstance(L, bool) or int(L) != L or L < 1 or L % K:
        raise ValueError(f"L (tokens per message) must be a positive multiple of K={K}, got {L}")
    return int(L)


def check_autoencoder(saved: dict[str, int], autoencoder: Any) -> None:
    """Raise ValueError when the autoencoder's K, l or V differ from those a protocol was fitted with."""
    K, latent_dim, V = autoencoder_dims(autoencoder)
    have = {"K": K, "latent_dim": latent_dim, "vocab_size": V}
    for key, value in saved.items():
        if have[key] != value:
            raise ValueError(
                f"autoencoder {key}={have[key]} does not match the saved protocol's {key}={value}"
            )


class LatentProtocol(Protocol):
    """What the protocols over a CALM autoencoder's latent means share: the model's dims, the latent size of a
    message, the training-input check, the saved config and ``load``. Subclasses set ``config_class``."""

    config_class: ClassVar[type]

    def __init__(self, autoencoder: Any, config: Any | None = None) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.config = config or self.config_class()
        self.K, self.latent_dim, self._vocab_size = autoencoder_dims(autoencoder)
        self.basis = LatentBasis()

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def latent_size(self, L: int) -> int:
        """``D = L/K * l``: the latent coordinates of an ``L``-token message."""
        return check_chunked_length(L, self.K) // self.K * self.latent_dim

    def _check_train(self, train_ids: Any) -> np.ndarray:
        ids = super()._check_train(train_ids)
        check_chunked_length(ids.shape[1], self.K)
        return ids

    def _config(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self.config),
            "autoencoder": {"K": self.K, "latent_dim": self.latent_dim, "vocab_size": self.vocab_size},
        }

    @classmethod
    def load(cls, directory: str | Path, autoencoder: Any) -> LatentProtocol:
        """Load a protocol written by ``save`` on top of the autoencoder it was fitted with."""
        meta = cls.read_config(directory)
        if meta["protocol"] != cls.name:
            raise ValueError(f"{directory} holds a {meta['protocol']!r} protocol, not {cls.name!r}")
        config = dict(meta["config"])
        check_autoencoder(read_autoencoder_dims(directory, config), autoencoder)
        proto = cls(autoencoder, build_config(directory, cls.config_class, config))
        proto._load_stats(directory, meta["seq_len"])
        return proto
