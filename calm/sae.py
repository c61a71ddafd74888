"""A TopK sparse autoencoder (SAE) over activation vectors, saved in SAELens's on-disk format.

Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (https://arxiv.org/abs/2406.04093):

    f = TopK(ReLU((x - b_dec) @ W_enc + b_enc))     (..., d_sae): the k largest pre-activations, others 0
    x_hat = f @ W_dec + b_dec                        (..., d_in)

Shapes: N rows of activations, d_in their width, d_sae the dictionary size. Parameters are named as SAELens
names them (W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,)), and ``save_sae``
writes what SAELens's ``SAE.save_model`` writes: ``cfg.json`` (architecture "topk", k, d_in, d_sae, ...) and
``sae_weights.safetensors``. ``load_sae`` reads that back, from this module or from SAELens (6.x, and the
older layout with architecture "standard" and ``activation_fn_str`` "topk"). Training follows the paper:
decoder rows kept at unit norm (the gradient along each row removed first), W_enc initialised as W_dec.T,
b_dec as the data mean, and the AuxK loss that lets dead latents model what the live ones leave over.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from torch import nn

__all__ = ["SAE_CFG_FILENAME", "SAE_WEIGHTS_FILENAME", "TopKSAE", "dead_features", "feature_frequency",
           "fraction_variance_explained", "load_sae", "mean_l0", "save_sae", "train_sae"]

SAE_CFG_FILENAME = "cfg.json"
SAE_WEIGHTS_FILENAME = "sae_weights.safetensors"
# the cfg.json layout of SAELens >= 6 (it reads a cfg without this version as a pre-6 layout and converts it)
SAELENS_FORMAT_VERSION = "6.0.0"
WEIGHT_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")


class TopKSAE(nn.Module):
    """TopK SAE: ``encode`` (..., d_in) -> (..., d_sae) with at most k non-zeros; ``decode`` back."""

    def __init__(self, d_in: int, d_sae: int, k: int, *, apply_b_dec_to_input: bool = True,
                 metadata: dict | None = None) -> None:
        super().__init__()
        if not (1 <= k <= d_sae and d_in >= 1):
            raise ValueError(f"a TopK SAE needs 1 <= k <= d_sae and d_in >= 1, got k={k}, d_sae={d_sae}, d_in={d_in}")
        self.d_in, self.d_sae, self.k = d_in, d_sae, k
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.metadata = dict(metadata or {})
        # random unit-norm decoder rows; the encoder starts as their transpose (Gao et al. sec. 2.2)
        W_dec = torch.randn(d_sae, d_in)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        self.W_enc = nn.Parameter(W_dec.T.clone().contiguous())
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations (..., d_in) -> (..., d_sae)."""
        x = x.to(self.W_enc.dtype)
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (..., d_in) -> (..., d_sae): the k largest pre-activations, ReLU'd, others 0."""
        pre = self.pre_acts(x)
        # top-k then ReLU, as SAELens's TopK does: the same values as ReLU then top-k, ties at 0 aside
        values, index = pre.topk(self.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter_(-1, index, values.relu())

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction (..., d_sae) -> (..., d_in)."""
        return f @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Scale every decoder row to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def remove_parallel_grads(self) -> None:
        """Drop the part of W_dec's gradient along each row: the step then only turns the unit-norm rows."""
        if self.W_dec.grad is not None:
            along = (self.W_dec.grad * self.W_dec).sum(-1, keepdim=True)
            self.W_dec.grad -= along * self.W_dec


def train_sae(x: torch.Tensor, d_sae: int, k: int, *, steps: int = 2000, batch_size: int = 1024, lr: float = 1e-3,
              seed: int = 0, aux_k: int | None = None, aux_coef: float = 1 / 32, dead_after: int = 200,
              progress: bool = False, metadata: dict | None = None) -> TopKSAE:
    """Train a TopK SAE on activations ``x (N, d_in)`` (raw: no normalisation, SAELens's "none").

    Loss: squared error over the total variance of the batch (so lr does not depend on the scale of x), plus
    ``aux_coef`` x the AuxK loss: the ``aux_k`` (default d_in // 2) largest pre-activations among latents not
    active for ``dead_after`` steps reconstruct the residual x - x_hat (Gao et al. sec. 2.4). Adam, lr decayed
    linearly over the last 20% of the steps. Seeded by ``seed`` (init and batches).
    """
    from tqdm.auto import tqdm

    if x.dim() != 2 or len(x) < 2:
        raise ValueError(f"x must have shape (N >= 2, d_in), got {tuple(x.shape)}")
    N, d_in = x.shape
    x = x.float()
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        sae = TopKSAE(d_in, d_sae, k, metadata=metadata)
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0))
    aux_k = aux_k if aux_k is not None else max(1, d_in // 2)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    decay = max(1, steps // 5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (steps - s) / decay))
    last_active = torch.zeros(d_sae, dtype=torch.long)  # step each latent last fired
    for step in tqdm(range(steps), desc=f"sae d_sae={d_sae} k={k}", disable=not progress, mininterval=5):
        xb = x[torch.randint(0, N, (min(batch_size, N),), generator=gen)]  # (B, d_in)
        pre = sae.pre_acts(xb)  # (B, d_sae)
        values, index = pre.topk(k, dim=-1, sorted=False)
        f = torch.zeros_like(pre).scatter(-1, index, values.relu())
        x_hat = sae.decode(f)
        total = (xb - xb.mean(0)).pow(2).sum().clamp_min(1e-12)
        loss = (x_hat - xb).pow(2).sum() / total
        fired = (f > 0).any(0)
        last_active[fired] = step
        dead = (step - last_active) >= dead_after
        if aux_coef > 0 and dead.any():
            # the dead latents' largest pre-activations model the residual: gives them a gradient to revive on
            dead_pre = pre.masked_fill(~dead, -math.inf)
            n_aux = min(aux_k, int(dead.sum()))
            av, ai = dead_pre.topk(n_aux, dim=-1, sorted=False)
            e_hat = torch.zeros_like(pre).scatter(-1, ai, av.relu()) @ sae.W_dec  # (B, d_in)
            residual = (xb - x_hat).detach()
            loss = loss + aux_coef * (e_hat - residual).pow(2).sum() / total
        opt.zero_grad(set_to_none=True)
        loss.backward()
        sae.remove_parallel_grads()
        opt.step()
        sched.step()
        sae.normalize_decoder()
    sae.eval()
    return sae


# ----------------------------------------------------------------------------------------------------------
# metrics


def _encode_all(sae: TopKSAE, x: torch.Tensor, batch: int = 8192):
    """Yield (x rows, feature activations) in batches."""
    for i in range(0, len(x), batch):
        xb = torch.as_tensor(x[i: i + batch]).float()
        yield xb, sae.encode(xb)


@torch.no_grad()
def fraction_variance_explained(sae: TopKSAE, x: torch.Tensor) -> float:
    """1 - sum of squared reconstruction errors / total variance of ``x (N, d_in)`` about its mean."""
    x = torch.as_tensor(x).float()
    sse = sum(float((sae.decode(f) - xb).pow(2).sum()) for xb, f in _encode_all(sae, x))
    return 1.0 - sse / float((x - x.mean(0)).pow(2).sum().clamp_min(1e-12))


@torch.no_grad()
def feature_frequency(sae: TopKSAE, x: torch.Tensor) -> torch.Tensor:
    """``(d_sae,)`` share of the rows of ``x (N, d_in)`` on which each feature is active (> 0)."""
    counts = sum((f > 0).sum(0) for _, f in _encode_all(sae, x))
    return counts.float() / len(x)


def mean_l0(sae: TopKSAE, x: torch.Tensor) -> float:
    """L0: the mean number of active features per row of ``x (N, d_in)`` (at most k)."""
    return float(feature_frequency(sae, x).sum())


def dead_features(sae: TopKSAE, x: torch.Tensor) -> int:
    """Features never active on any row of ``x (N, d_in)``."""
    return int((feature_frequency(sae, x) == 0).sum())


# ----------------------------------------------------------------------------------------------------------
# SAELens on-disk format


def save_sae(sae: TopKSAE, directory: str | os.PathLike, **metadata) -> Path:
    """Write ``cfg.json`` and ``sae_weights.safetensors`` as SAELens 6.x's ``SAE.save_model`` does.

    ``metadata`` (JSON values; e.g. ``hook_name``, ``model_name``) joins ``sae.metadata`` under cfg["metadata"].
    """
    from safetensors.torch import save

    from calm.files import atomic_write_bytes, atomic_write_text

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    weights = {name: getattr(sae, name).detach().float().contiguous() for name in WEIGHT_KEYS}
    atomic_write_bytes(path / SAE_WEIGHTS_FILENAME, save(weights))
    cfg = {"d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": sae.apply_b_dec_to_input, "normalize_activations": "none",
           "reshape_activations": "none",
           "metadata": {"sae_lens_version": SAELENS_FORMAT_VERSION, "sae_lens_training_version": None,
                        **sae.metadata, **metadata},
           "k": sae.k, "rescale_acts_by_decoder_norm": False, "architecture": "topk"}
    atomic_write_text(path / SAE_CFG_FILENAME, json.dumps(cfg, indent=2) + "\n")
    return path


def _is_pre_6(cfg: dict) -> bool:
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    try:
        return not version or int(str(version).split(".")[0]) < 6
    except ValueError:
        return True


def load_sae(directory: str | os.PathLike) -> TopKSAE:
    """A TopK SAE from a directory written by ``save_sae`` or by SAELens (``SAE.save_model``).

    Raises:
        ValueError: naming what was found for anything this module does not compute: another architecture
            (standard ReLU, jumprelu, gated, batchtopk, ...), input normalisation other than "none", or
            decoder-norm rescaling; or no cfg.json in ``directory``.
        DamagedFileError: cfg.json is truncated or holds a value of the wrong JSON kind (``"false"`` for a
            boolean, ``2.7`` for k), or the weights file is missing, damaged, of other shapes than cfg.json's
            or holds NaN/inf.
    """
    from calm.integrity import with_fix

    path = Path(directory)
    cfg_path = path / SAE_CFG_FILENAME
    if not cfg_path.exists():
        raise ValueError(f"{path} holds no {SAE_CFG_FILENAME} (an SAELens SAE directory)")
    with with_fix(f"save the SAE again (calm.sae.save_sae) or fetch it again into {path}"):
        return _read_sae(path, cfg_path)


def _read_sae(path: Path, cfg_path: Path) -> TopKSAE:
    from calm.files import DamagedFileError, read_json
    from calm.integrity import check_json_value, check_tensors, read_safetensors

    cfg = read_json(cfg_path, what="SAE config")
    architecture = cfg.get("architecture")
    k = cfg.get("k")
    if _is_pre_6(cfg):
        # SAELens < 6: architecture "standard" with activation_fn_str "topk" and activation_fn_kwargs {"k": ...}
        activation = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
        architecture = architecture or "standard"
        if activation == "topk" and (cfg.get("activation_fn_kwargs") or {}).get("k") is not None:
            architecture, k = "topk", cfg["activation_fn_kwargs"]["k"]
        elif architecture == "standard":
            architecture = f"standard (activation {activation!r})"
    if architecture != "topk":
        raise ValueError(f"{path}: SAE architecture {architecture!r} is not supported; only 'topk' is")
    if k is None:
        raise DamagedFileError(cfg_path, "a topk SAE's config needs k")
    # the JSON kinds: bool("false") is True and int(2.7) is 2, so a value of the wrong kind is never converted
    for name, value, kind in (("k", k, int), ("d_in", cfg.get("d_in"), int), ("d_sae", cfg.get("d_sae"), int),
                              ("apply_b_dec_to_input", cfg.get("apply_b_dec_to_input", True), bool),
                              ("rescale_acts_by_decoder_norm", cfg.get("rescale_acts_by_decoder_norm", False),
                               bool | None)):
        check_json_value(cfg_path, name, value, kind, what="SAE config")
    norm = cfg.get("normalize_activations", "none")
    if norm not in (None, False, "none"):
        raise ValueError(f"{path}: normalize_activations {norm!r} is not supported; only 'none' is")
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise ValueError(f"{path}: rescale_acts_by_decoder_norm=true is not supported")
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    if not 1 <= k <= d_sae or d_in < 1:
        raise DamagedFileError(cfg_path, f"a TopK SAE needs 1 <= k <= d_sae and d_in >= 1, got k={k}, "
                                         f"d_sae={d_sae}, d_in={d_in}")
    weights = read_safetensors(path / SAE_WEIGHTS_FILENAME)
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    check_tensors(path / SAE_WEIGHTS_FILENAME, {name: weights[name] for name in expected if name in weights},
                  expected)
    metadata = {key: value for key, value in (cfg.get("metadata") or {}).items()
                if key not in ("sae_lens_version", "sae_lens_training_version")}
    sae = TopKSAE(d_in, d_sae, k, apply_b_dec_to_input=cfg.get("apply_b_dec_to_input", True),
                  metadata=metadata)
    with torch.no_grad():
        for name in WEIGHT_KEYS:  # computed in float32 whatever the stored dtype
            getattr(sae, name).copy_(weights[name].float())
    return sae.eval()
