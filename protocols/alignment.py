"""Aligning two agents' latent spaces: a map from the speaker's vector messages to the listener's, fitted
on anchor passages both agents encode.

When speaker and listener hold different autoencoders (another seed, another latent size l, another
tokenizer), the listener cannot read the speaker's vector protocol symbols with its own basis: the
two latent spaces differ by an unknown transform. ``LatentAlignment`` learns that transform from M
anchors, texts both agents encode with their own vector protocol at the same budget n:

    source (M, n): the speaker's clean symbols of each anchor text
    target (M, n'): the listener's clean symbols of the same text (re-tokenised by the listener
                    when the tokenizers differ)

and the listener applies it to what it receives, then decodes with its own protocol
(``experiments.alignment``). Methods, each a kept library's solver:

- ``procrustes``: centre both sides, the orthogonal map ``scipy.linalg.orthogonal_procrustes`` finds,
  times the least-squares scale (both sides zero-padded to the larger size when n != n'), plus the
  target mean. Few parameters: the anchors needed grow slowly with n.
- ``ridge``: an affine map, ``sklearn.linear_model.RidgeCV`` choosing the penalty by leave-one-out
  over ``alphas``.
- ``mlp``: ``sklearn.neural_network.MLPRegressor`` with one ReLU hidden layer (early stopping from
  256 anchors up).
- ``none``: the identity (0 anchors: the listener reads the speaker's symbols as its own; the right
  map only when both hold the same weights).

A fitted alignment is a few arrays: ``save`` writes them as safetensors with a JSON config, ``load``
reads them back (no pickles) and checks them: arrays of the names and shapes the config's method and sizes
imply, finite, or a ``calm.files.DamagedFileError`` naming the file; ``transform`` evaluates them with numpy,
so a reloaded map gives the same output bit for bit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from calm.files import DamagedFileError, atomic_write_bytes, atomic_write_text, read_json

__all__ = ["METHODS", "AlignmentConfig", "LatentAlignment"]

Method = Literal["none", "procrustes", "ridge", "mlp"]
METHODS: tuple[str, ...] = ("procrustes", "ridge", "mlp")
CONFIG_FILE = "alignment.json"
WEIGHTS_FILE = "alignment.safetensors"


@dataclass
class AlignmentConfig:
    """Settings of one alignment map."""

    method: Method = "procrustes"
    """none, procrustes, ridge or mlp (module docstring)"""
    alphas: tuple[float, ...] = (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1000.0)
    """ridge: the penalties RidgeCV chooses from (leave-one-out)"""
    hidden_size: int = 256
    """mlp: width of the hidden layer"""
    max_iter: int = 400
    """mlp: Adam epochs at most"""
    l2: float = 1e-3
    """mlp: weight penalty (MLPRegressor's alpha)"""
    batch_size: int = 512
    """mlp: Adam minibatch (sklearn's 200 makes 16k chunk anchors cost minutes of Python overhead per fit)"""
    learning_rate: float = 2e-3
    """mlp: Adam's step size"""
    seed: int = 0
    """mlp: initialisation and batch order"""

    def __post_init__(self) -> None:
        if self.method not in ("none", *METHODS):
            raise ValueError(f"method must be one of none, {', '.join(METHODS)}; got {self.method!r}")
        if not self.alphas or any(not a > 0 for a in self.alphas):
            raise ValueError(f"alphas must be non-empty and > 0, got {self.alphas}")
        for name in ("hidden_size", "max_iter", "batch_size"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not self.l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {self.l2}")


def _shapes(config: AlignmentConfig, n: int, m: int) -> dict[str, tuple[int, ...]]:
    """The arrays of a fitted ``config.method`` map from ``n`` to ``m`` dims, by name."""
    if config.method == "none":
        return {}
    if config.method in ("procrustes", "ridge"):
        return {"weight": (n, m), "bias": (m,)}
    h = config.hidden_size
    return {"weight0": (n, h), "bias0": (h,), "weight1": (h, m), "bias1": (m,)}


class LatentAlignment:
    """A fitted map from the speaker's message space ``(.., n)`` to the listener's ``(.., n')``."""

    def __init__(self, config: AlignmentConfig | None = None) -> None:
        self.config = config or AlignmentConfig()
        self.arrays: dict[str, np.ndarray] = {}
        self.source_dim: int | None = None
        self.target_dim: int | None = None
        self.anchors = 0
        self.info: dict[str, float] = {}

    @property
    def method(self) -> str:
        return self.config.method

    def fit(self, source: np.ndarray, target: np.ndarray) -> LatentAlignment:
        """Fit on paired anchors ``source (M, n)`` and ``target (M, n')`` (row i: the same text).

        Raises:
            ValueError: shapes disagree, too few anchors for the method (procrustes and ridge need 2, mlp 4),
                or ``none`` between spaces of different sizes.
        """
        source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
        if source.ndim != 2 or target.ndim != 2 or len(source) != len(target):
            raise ValueError(f"source and target must be (M, n) and (M, n') of the same M anchors, got "
                             f"{source.shape} and {target.shape}")
        if not (np.isfinite(source).all() and np.isfinite(target).all()):
            raise ValueError("anchors must be finite")
        M, n = source.shape
        m = target.shape[1]
        self.source_dim, self.target_dim, self.anchors = n, m, M
        method = self.config.method
        need = {"none": 0, "procrustes": 2, "ridge": 2, "mlp": 4}[method]
        if M < need:
            raise ValueError(f"{method} alignment needs >= {need} anchors, got {M}")
        if method == "none":
            if n != m:
                raise ValueError(f"the identity map needs equal sizes, got n={n} and n'={m}; fit a map on anchors")
            self.arrays = {}
        elif method == "procrustes":
            from scipy.linalg import orthogonal_procrustes

            mu_s, mu_t = source.mean(axis=0), target.mean(axis=0)
            size = max(n, m)
            a = np.zeros((M, size))
            b = np.zeros((M, size))
            a[:, :n], b[:, :m] = source - mu_s, target - mu_t
            rotation, trace = orthogonal_procrustes(a, b)  # argmin ||a R - b||, trace: the nuclear norm of a^T b
            norm = float((a**2).sum())
            scale = trace / norm if norm > 0 else 1.0
            weight = scale * rotation[:n, :m]  # (n, m)
            self.arrays = {"weight": weight, "bias": mu_t - mu_s @ weight}
        elif method == "ridge":
            from sklearn.linear_model import RidgeCV

            model = RidgeCV(alphas=self.config.alphas).fit(source, target)
            self.arrays = {"weight": np.asarray(model.coef_, np.float64).reshape(m, n).T.copy(),
                           "bias": np.asarray(model.intercept_, np.float64).reshape(m)}
            self.info["alpha"] = float(model.alpha_)
        else:
            import warnings

            from sklearn.exceptions import ConvergenceWarning
            from sklearn.neural_network import MLPRegressor

            model = MLPRegressor(hidden_layer_sizes=(self.config.hidden_size,), alpha=self.config.l2,
                                 max_iter=self.config.max_iter, random_state=self.config.seed,
                                 batch_size=min(self.config.batch_size, M), learning_rate_init=self.config.learning_rate,
                                 early_stopping=M >= 256, n_iter_no_change=20)
            with warnings.catch_warnings():  # few anchors stop at max_iter: that is the point being measured
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(source, target)
            self.arrays = {"weight0": model.coefs_[0], "bias0": model.intercepts_[0],
                           "weight1": model.coefs_[1], "bias1": model.intercepts_[1]}
            self.info["epochs"] = float(model.n_iter_)
        self.arrays = {k: np.ascontiguousarray(v, dtype=np.float64) for k, v in self.arrays.items()}
        # the fit's own error: how far the anchors land from their targets (train error, not held-out)
        self.info["anchor_mse"] = float(np.mean((self.transform(source) - target) ** 2)) if M else float("nan")
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Map speaker messages ``x (B, n)`` into the listener's space: ``(B, n')`` float64."""
        if self.source_dim is None:
            raise RuntimeError("alignment not fitted: call fit(source, target) first")
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or x.shape[1] != self.source_dim:
            raise ValueError(f"x must be (B, n={self.source_dim}), got {x.shape}")
        a = self.arrays
        if self.method == "none":
            return x.copy()
        if self.method in ("procrustes", "ridge"):
            return x @ a["weight"] + a["bias"]
        hidden = np.maximum(x @ a["weight0"] + a["bias0"], 0.0)
        return hidden @ a["weight1"] + a["bias1"]

    def save(self, directory: str | Path) -> None:
        """Write ``alignment.json`` (config, sizes, fit info) and ``alignment.safetensors`` (the arrays)."""
        from safetensors.numpy import save

        if self.source_dim is None:
            raise RuntimeError("alignment not fitted: nothing to save")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"config": asdict(self.config), "source_dim": self.source_dim, "target_dim": self.target_dim,
                "anchors": self.anchors, "info": self.info}
        atomic_write_bytes(directory / WEIGHTS_FILE, save(self.arrays or {"empty": np.zeros(0)}))
        atomic_write_text(directory / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> LatentAlignment:
        """Read an alignment written by ``save``.

        Raises:
            FileNotFoundError: no ``alignment.json`` in ``directory``.
            DamagedFileError: either file is damaged (truncated, a field of the wrong kind, a config its class
                refuses), or the arrays are not the names and shapes that ``method``, ``source_dim``,
                ``target_dim`` and ``hidden_size`` imply, or hold NaN/inf.
        """
        from calm.integrity import with_fix

        directory = Path(directory)
        with with_fix(f"remove the saved alignment (rm -r {directory}) and fit it again"):
            return cls.from_arrays(_read_saved(directory))

    def to_arrays(self) -> dict:
        """Everything ``from_arrays`` needs (for shipping to Ray workers without files)."""
        return {"config": asdict(self.config), "source_dim": self.source_dim, "target_dim": self.target_dim,
                "anchors": self.anchors, "arrays": dict(self.arrays), "info": dict(self.info)}

    @classmethod
    def from_arrays(cls, state: dict) -> LatentAlignment:
        """The inverse of ``to_arrays``."""
        config = dict(state["config"])
        config["alphas"] = tuple(config["alphas"])
        out = cls(AlignmentConfig(**config))
        out.source_dim, out.target_dim = int(state["source_dim"]), int(state["target_dim"])
        out.anchors = int(state["anchors"])
        out.arrays, out.info = dict(state["arrays"]), dict(state["info"])
        return out


def _read_saved(directory: Path) -> dict:
    """The checked state in ``directory``, in ``LatentAlignment.to_arrays``'s layout (see ``load``)."""
    from calm.integrity import check_json_types, check_json_value, check_tensors, read_safetensors

    path = directory / CONFIG_FILE
    meta = read_json(path, what="alignment config")
    for key, tp in (("config", dict), ("source_dim", int), ("target_dim", int), ("anchors", int),
                    ("info", dict)):
        if key not in meta:
            raise DamagedFileError(path, f"the alignment config lacks the field {key!r}")
        check_json_value(path, key, meta[key], tp, what="alignment config")
    check_json_types(path, AlignmentConfig, meta["config"], what="alignment config")
    try:
        config = AlignmentConfig(**{**meta["config"], "alphas": tuple(meta["config"].get("alphas", ()))})
    except (TypeError, ValueError) as exc:
        raise DamagedFileError(path, f"the AlignmentConfig it holds is refused: {exc}") from None
    n, m = meta["source_dim"], meta["target_dim"]
    if n < 1 or m < 1 or (config.method == "none" and n != m):
        raise DamagedFileError(path, f"sizes n={n}, n'={m} do not fit a {config.method} map")
    weights = directory / WEIGHTS_FILE
    if not weights.exists():
        raise DamagedFileError(weights, f"the map's arrays are missing ({CONFIG_FILE} is there)")
    arrays = read_safetensors(weights, framework="numpy")
    arrays.pop("empty", None)
    check_tensors(weights, arrays, _shapes(config, n, m), what="alignment arrays")
    return {**meta, "arrays": arrays}
