"""Referential games per second through each protocol with the soft receiver, and how close the latent
protocols come to this machine's matmul-bound limit.

    python bench/channel_throughput.py [--checkpoint DIR] [--batch-size 256] [--candidates 8] [--seconds 4]

One game: the speaker encodes its target, AWGN is added, the listener encodes its C candidates and
scores them (``Protocol.score``, the maximum-likelihood soft receiver), argmax. The latent protocols are
timed three ways, side by side in one run:

- ``before``: the encoder as it ran until issue 30: every game's C + 1 passages encoded from scratch in
  forwards of 1,024 passages (``legacy_encode_means`` below), the code projected in numpy;
- ``cold``: today's ``encode_means``: forwards of about 4,096 tokens (intermediates that stay in cache),
  each distinct passage of a batch of games encoded once (the listener finds the speaker's target),
  the means cache emptied before every batch;
- ``warm``: the means cache kept across batches, as in a sweep, whose trials draw from the same test
  passages: once the pool is encoded, a game runs no encoder at all.

The matmul FLOPs of one passage's encode are counted with ``torch.utils.flop_counter.FlopCounterMode``
(norms, activations and the embedding lookup are not matmuls and are not counted); the limit is this
machine's measured float32 matmul GFLOP/s (square matmuls, same threads, the best of a measurement before
and one after the games). The fraction counts the encodes that actually ran:

    fraction = passages encoded per second * encoder FLOPs per passage / (matmul GFLOP/s * 1e9),

so a cache hit adds games but no FLOPs (``warm`` has no meaningful fraction; its games/s is the figure).
The goal (issue 30) is ``cold`` >= 0.5 for the vector and quantized protocols.

Without --checkpoint the autoencoder is the ``tiny`` preset (V = 8192), randomly initialised: speed
does not depend on the weights. Passages are random ids. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import protocols.latent as latent  # noqa: E402
from protocols import make_protocol  # noqa: E402

LATENT = ("vector", "quantized")
MODES = ("before", "cold", "warm")


def legacy_encode_means(autoencoder, ids: np.ndarray, *, batch_size: int, **_) -> np.ndarray:
    """``encode_means`` as it was before issue 30: every row encoded, in forwards of ``batch_size`` passages."""
    out = []
    with torch.inference_mode():
        for start in range(0, ids.shape[0], batch_size):
            mu, _ = autoencoder.encode(torch.as_tensor(ids[start : start + batch_size], dtype=torch.long))
            out.append(mu.float().cpu().numpy())
    latent._ENCODED_PASSAGES += ids.shape[0]
    return np.concatenate(out, axis=0).astype(np.float64)


def legacy_basis_forward(self, mu: np.ndarray) -> np.ndarray:
    """``LatentBasis.forward`` as it was before issue 30: numpy, whose BLAS threads then compete with torch's."""
    x = ((mu - self.mean) / self.std).reshape(mu.shape[0], -1)
    return (x - self.pca_mean) @ self.components if self.uses_pca else x


@contextlib.contextmanager
def encoder_mode(mode: str):
    """Run the latent protocols' encoder the ``before`` way (the legacy functions swapped in), or today's."""
    import protocols.quantized
    import protocols.vector

    modules = (protocols.vector, protocols.quantized)
    saved = [m.encode_means for m in modules], latent.LatentBasis.forward
    if mode == "before":
        for m in modules:
            m.encode_means = legacy_encode_means
        latent.LatentBasis.forward = legacy_basis_forward
    latent.MeansCache.clear_all()
    try:
        yield
    finally:
        for m, fn in zip(modules, saved[0]):
            m.encode_means = fn
        latent.LatentBasis.forward = saved[1]
        latent.MeansCache.clear_all()


@dataclass
class Config:
    """Benchmark settings."""

    checkpoint: str | None = None
    """autoencoder directory (calm.checkpoint); None: the tiny preset, randomly initialised"""
    batch_size: int = 256
    """B, games per batch"""
    candidates: int = 8
    """C, candidates per game"""
    passage_length: int = 32
    """L, tokens per passage (a multiple of K)"""
    channel_uses: int = 64
    """n, the budget every protocol is fitted to"""
    quantized_bits: int = 4
    """bits per dimension of the quantised-vector protocol"""
    sigma: float = 0.5
    """AWGN standard deviation"""
    seconds: float = 4.0
    """minimum timed seconds per protocol (after one warm-up batch)"""
    seed: int = 0
    """seed of passages, games and noise"""
    threads: int = 0
    """torch intra-op threads; 0 keeps torch's default"""
    matmul_size: int = 1024
    """side of the square float32 matmuls that measure the machine's matmul GFLOP/s"""


def matmul_gflops(size: int, device: torch.device, seconds: float = 1.0) -> float:
    """Measured float32 GFLOP/s of ``size x size`` matmuls (2 size^3 FLOPs each)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)  # warm-up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.mm(a, b)
        count += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def encoder_flops(autoencoder, L: int, device: torch.device) -> int:
    """Matmul FLOPs of encoding one passage of L tokens (counted by torch's FlopCounterMode)."""
    from torch.utils.flop_counter import FlopCounterMode

    ids = torch.zeros((1, L), dtype=torch.long, device=device)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        autoencoder.encode(ids)
    return int(counter.get_total_flops())


def load_autoencoder(cfg: Config, device: torch.device):
    if cfg.checkpoint:
        from calm.checkpoint import load_pretrained

        model, _ = load_pretrained(cfg.checkpoint, device=device)
        return model.eval()
    from calm.autoencoder import Autoencoder, preset

    torch.manual_seed(cfg.seed)
    return Autoencoder(preset("tiny", vocab_size=8192)).to(device).eval()


def time_games(proto, pool: np.ndarray, cfg: Config, rng: np.random.Generator,
               mode: str = "cold") -> tuple[float, float, float]:  # fmt: skip
    """Play soft-receiver games for at least cfg.seconds; returns (games/s, accuracy, passages encoded per s)."""
    B, C = cfg.batch_size, cfg.candidates

    def batch() -> float:
        if mode != "warm":
            latent.MeansCache.clear_all()
        rows = rng.integers(0, len(pool), size=(B, C))  # (B, C); duplicates are rare and harmless here
        cands = pool[rows]  # (B, C, L)
        target = rng.integers(0, C, size=B)
        x = proto.encode(cands[np.arange(B), target])  # speaker (B, n)
        y = x + cfg.sigma * rng.standard_normal(x.shape)  # channel
        choice = proto.score(y, cands).argmax(axis=1)  # listener (AWGN: the ranking does not depend on sigma)
        return float((choice == target).mean())

    batch()  # warm-up
    if mode == "warm":  # the steady state of a sweep: every pool passage already encoded once
        proto.encode(pool)
    games, correct, encoded, start = 0, 0.0, latent.encoded_passages(), time.perf_counter()
    while time.perf_counter() - start < cfg.seconds:
        correct += batch() * B
        games += B
    seconds = time.perf_counter() - start
    return games / seconds, correct / games, (latent.encoded_passages() - encoded) / seconds


def main(cfg: Config) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    model = load_autoencoder(cfg, device)
    K, V, d = model.config.K, model.config.vocab_size, model.config.hidden_size
    L = cfg.passage_length
    if L % K:
        raise ValueError(f"passage_length must be a multiple of K={K}, got {L}")
    train = rng.integers(0, V, size=(4096, L))
    pool = rng.integers(0, V, size=(4096, L))
    n = cfg.channel_uses
    protos = {name: make_protocol(name, model, budget=n, quantized_bits=cfg.quantized_bits)
              for name in ("uncoded-tokens", "hash", "vector", "quantized")}  # fmt: skip
    # the limit: the best of two matmul measurements, before and after the games (a shared machine's
    # load varies; the best one is the closest to what the hardware can do)
    gflops = matmul_gflops(cfg.matmul_size, device)
    per_passage = encoder_flops(model, L, device)
    results = {}
    for name, proto in protos.items():
        proto.fit(train)
        for mode in MODES if name in LATENT else ("cold",):
            with encoder_mode(mode):
                games_per_s, accuracy, encoded_per_s = time_games(proto, pool, cfg, rng, mode)
            achieved = encoded_per_s * per_passage / 1e9 if name in LATENT else 0.0
            results[name if name not in LATENT else f"{name}/{mode}"] = {
                "games_per_s": round(games_per_s, 1),
                "channel_uses": proto.channel_uses(L),
                "soft_accuracy": round(accuracy, 4),
                "passages_encoded_per_game": round(encoded_per_s / games_per_s, 3),
                "achieved_gflops": round(achieved, 2),
                # the token protocols run no model: no matmul bound applies
            }
    gflops = max(gflops, matmul_gflops(cfg.matmul_size, device))
    for key, result in results.items():
        result["fraction_of_matmul_bound"] = (
            round(result["achieved_gflops"] / gflops, 4) if key.split("/")[0] in LATENT and
            not key.endswith("/warm") else None
        )  # fmt: skip
    speedup = {f"{name}_{mode}_vs_before": round(results[f"{name}/{mode}"]["games_per_s"]
                                                 / results[f"{name}/before"]["games_per_s"], 2)
               for name in LATENT for mode in ("cold", "warm")}  # fmt: skip
    return {
        "benchmark": "channel_throughput",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "matmul_gflops": round(gflops, 2),
        "encoder_flops_per_passage": per_passage,
        "autoencoder": {"K": K, "latent_dim": model.config.latent_dim, "hidden_size": d, "vocab_size": V},
        "config": asdict(cfg),
        "protocols": results,
        "games_per_s_speedup": speedup,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field, default in asdict(Config()).items():
        kind = type(default) if default is not None else str
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, default=default)
    print(json.dumps(main(Config(**vars(parser.parse_args()))), indent=2))
