"""Referential games per second through each protocol with the soft receiver, and how close the latent
protocols come to this machine's matmul-bound limit.

    python bench/channel_throughput.py [--checkpoint DIR] [--batch-size 256] [--candidates 8] [--seconds 4]

One game: the speaker encodes its target, AWGN is added, the listener encodes its C candidates and
scores them (``Protocol.score``, the maximum-likelihood soft receiver), argmax. So a game runs the
autoencoder encoder on C + 1 passages. The matmul FLOPs of one passage's encode are counted with
``torch.utils.flop_counter.FlopCounterMode`` (norms, activations and the embedding lookup are not
matmuls and are not counted); the limit is this machine's measured float32 matmul GFLOP/s (square
matmuls, same threads, the best of a measurement before and one after the games), so

    fraction = games/s * encoder FLOPs per game / (matmul GFLOP/s * 1e9).

Without --checkpoint the autoencoder is the ``tiny`` preset (V = 8192), randomly initialised: speed
does not depend on the weights. Passages are random ids. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from protocols import make_protocol  # noqa: E402


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


def time_games(proto, pool: np.ndarray, cfg: Config, rng: np.random.Generator) -> tuple[float, float]:
    """Play soft-receiver games for at least cfg.seconds; returns (games/s, accuracy)."""
    B, C = cfg.batch_size, cfg.candidates

    def batch() -> float:
        rows = rng.integers(0, len(pool), size=(B, C))  # (B, C); duplicates are rare and harmless here
        cands = pool[rows]  # (B, C, L)
        target = rng.integers(0, C, size=B)
        x = proto.encode(cands[np.arange(B), target])  # speaker (B, n)
        y = x + cfg.sigma * rng.standard_normal(x.shape)  # channel
        choice = proto.score(y, cands).argmax(axis=1)  # listener (AWGN: the ranking does not depend on sigma)
        return float((choice == target).mean())

    batch()  # warm-up
    games, correct, start = 0, 0.0, time.perf_counter()
    while time.perf_counter() - start < cfg.seconds:
        correct += batch() * B
        games += B
    return games / (time.perf_counter() - start), correct / games


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
        games_per_s, accuracy = time_games(proto, pool, cfg, rng)
        flops = per_passage * (cfg.candidates + 1) if name in ("vector", "quantized") else 0
        achieved = games_per_s * flops / 1e9
        results[name] = {
            "games_per_s": round(games_per_s, 1),
            "channel_uses": proto.channel_uses(L),
            "soft_accuracy": round(accuracy, 4),
            "encoder_flops_per_game": flops,
            "achieved_gflops": round(achieved, 2),
            # the token protocol runs no model: no matmul bound applies
        }
    gflops = max(gflops, matmul_gflops(cfg.matmul_size, device))
    for result in results.values():
        flops = result["encoder_flops_per_game"]
        result["fraction_of_matmul_bound"] = (
            None if flops == 0 else round(result["achieved_gflops"] / gflops, 4)
        )
    return {
        "benchmark": "channel_throughput",
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "matmul_gflops": round(gflops, 2),
        "encoder_flops_per_passage": per_passage,
        "autoencoder": {"K": K, "latent_dim": model.config.latent_dim, "hidden_size": d, "vocab_size": V},
        "config": asdict(cfg),
        "protocols": results,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field, default in asdict(Config()).items():
        kind = type(default) if default is not None else str
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, default=default)
    print(json.dumps(main(Config(**vars(parser.parse_args()))), indent=2))
