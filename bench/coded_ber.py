"""Bit error rate of the coded protocol's bit path over AWGN against uncoded BPSK: the coding gain.

    python bench/coded_ber.py [--ldpc-k 512] [--polar-k 256] [--step-db 0.25] [--max-bits 1000000]

Random information bits go through exactly the code of ``protocols.coded.CodedLink`` (Sionna 5G
encoder, 5G scrambler, Gray PAM mapper; the generic exact APP demapper told ``AWGN(sigma)``;
descrambler and Sionna decoder): a rate-1/2 5G LDPC code (k = 512, N = 1024, BP with 20 iterations)
and a rate-1/2 5G uplink polar code (k = 256, N = 512, CRC-aided SCL with list 8), BPSK, over
``y = x + sigma n`` with unit symbol energy, so ``Eb/N0 = 1 / (2 r sigma^2)`` at code rate r.
The reference is exact uncoded BPSK, ``BER = Q(sqrt(2 Eb/N0))``.

Each curve walks up the Eb/N0 grid; a point simulates batches of codewords until it has seen
``target_bit_errors`` bit errors in at least ``target_block_errors`` codewords, or ``max_bits``
information bits; a curve stops after its first point below ``stop_ber`` (later points would show no
errors at this sample size). The Eb/N0 needed for BER 1e-3 is interpolated linearly in log10(BER)
between the two simulated points around it (an upper bound when the point below saw no errors:
see ``ebn0_at``); the coding gain is uncoded minus coded at that BER.
Saves the plot to docs/img/coded_ber.png. Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from environments.channels import AWGN  # noqa: E402
from protocols.coded import CodedLink  # noqa: E402


@dataclass
class Config:
    """Benchmark settings."""

    ldpc_k: int = 512
    """information bits of the LDPC code (N = k / rate); 0 skips the LDPC curve"""
    polar_k: int = 256
    """information bits of the polar code (N = k / rate <= 1088); 0 skips the polar curve"""
    rate: float = 0.5
    """code rate r of both codes"""
    bp_iterations: int = 20
    """LDPC belief-propagation iterations"""
    list_size: int = 8
    """polar SCL list size"""
    min_db: float = 0.0
    """first Eb/N0 of the grid (dB)"""
    max_db: float = 6.0
    """last Eb/N0 of the grid (dB)"""
    step_db: float = 0.25
    """grid step (dB)"""
    batch: int = 200
    """codewords per batch"""
    target_bit_errors: int = 500
    """a point stops once it has this many bit errors ..."""
    target_block_errors: int = 50
    """... in at least this many erroneous codewords"""
    max_bits: int = 1_000_000
    """or once it has simulated this many information bits"""
    stop_ber: float = 1e-4
    """a curve stops after its first point with BER below this"""
    target_ber: float = 1e-3
    """the BER at which the needed Eb/N0 and the coding gain are reported"""
    seed: int = 0
    """seed of bits and noise"""
    threads: int = 1
    """torch intra-op threads (Sionna's LDPC decoder is 4x slower with 2 threads on a shared 2-core box)"""
    plot: str = "docs/img/coded_ber.png"
    """where to save the plot (relative to the repository root); empty: no plot"""


def uncoded_bpsk_ber(ebn0_db: np.ndarray | float) -> np.ndarray:
    """Exact BER of uncoded BPSK on AWGN: ``Q(sqrt(2 Eb/N0)) = erfc(sqrt(Eb/N0)) / 2``."""
    ebn0 = 10.0 ** (np.asarray(ebn0_db, dtype=np.float64) / 10.0)
    return 0.5 * np.vectorize(math.erfc)(np.sqrt(ebn0))


def uncoded_ebn0_at(ber: float) -> float:
    """Eb/N0 (dB) at which uncoded BPSK has the given BER (bisection on the exact curve)."""
    lo, hi = -10.0, 20.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if uncoded_bpsk_ber(mid) > ber else (lo, mid)
    return 0.5 * (lo + hi)


def ebn0_at(ebn0_db: list[float], ber: list[float], bits: list[int], target: float) -> tuple[float | None, bool]:
    """Eb/N0 at which the simulated BER crosses ``target``, linear in log10(BER), and whether it is a bound.

    When the point just below the target saw no errors, its BER is taken as ``1 / bits`` (at most one
    error): the result is then an upper bound on the Eb/N0 needed (a lower bound on the coding gain).
    (None, False) when the grid does not bracket the target.
    """
    for i in range(len(ber) - 1):
        if ber[i] >= target > ber[i + 1]:
            bound = ber[i + 1] <= 0
            a, b = math.log10(ber[i]), math.log10(ber[i + 1] if not bound else 1.0 / bits[i + 1])
            t = (a - math.log10(target)) / (a - b)
            return ebn0_db[i] + t * (ebn0_db[i + 1] - ebn0_db[i]), bound
    return None, False


def simulate(link: CodedLink, cfg: Config, rng: np.random.Generator, label: str) -> dict:
    """BER and BLER of ``link`` over the Eb/N0 grid (see the module docstring for the stopping rules)."""
    r = link.k / link.N
    grid = np.arange(cfg.min_db, cfg.max_db + 1e-9, cfg.step_db)
    points = []
    start = time.perf_counter()
    for ebn0_db in grid:
        sigma = math.sqrt(1.0 / (2.0 * r * 10.0 ** (ebn0_db / 10.0)))
        channel = AWGN(sigma)
        bits = errors = blocks = block_errors = 0
        t0 = time.perf_counter()
        while bits < cfg.max_bits and not (errors >= cfg.target_bit_errors and block_errors >= cfg.target_block_errors):
            u = rng.integers(0, 2, size=(cfg.batch, link.k), dtype=np.uint8)
            x = link.modulate(u)
            y = channel(x, rng)
            u_hat = link.decode(link.demap(y, channel))
            wrong = u_hat != u
            bits += u.size
            errors += int(wrong.sum())
            blocks += cfg.batch
            block_errors += int(wrong.any(axis=1).sum())
        ber = errors / bits
        points.append({"ebn0_db": round(float(ebn0_db), 3), "sigma": round(sigma, 5), "ber": ber,
                       "bler": block_errors / blocks, "bits": bits, "bit_errors": errors,
                       "codewords": blocks, "block_errors": block_errors,
                       "seconds": round(time.perf_counter() - t0, 2)})
        print(f"[{label}] Eb/N0 {ebn0_db:5.2f} dB  BER {ber:.3e}  BLER {block_errors / blocks:.3e}  "
              f"({errors} errors / {bits} bits, {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        if ber < cfg.stop_ber:
            break
    at, bound = ebn0_at([p["ebn0_db"] for p in points], [p["ber"] for p in points],
                        [p["bits"] for p in points], cfg.target_ber)
    return {"k": link.k, "N": link.N, "rate": r, "points": points,
            "ebn0_db_at_target": at, "ebn0_at_target_is_bound": bound,
            "seconds": round(time.perf_counter() - start, 1)}


def plot(results: dict, cfg: Config, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    dense = np.linspace(cfg.min_db, max(cfg.max_db, 8.0), 200)
    ax.semilogy(dense, uncoded_bpsk_ber(dense), "k--", label="uncoded BPSK, Q(sqrt(2 Eb/N0))")
    styles = {"ldpc": ("o-", "5G LDPC, BP {it} it."), "polar": ("s-", "5G polar, CRC-SCL L={ls}")}
    for name, res in results["curves"].items():
        pts = [p for p in res["points"] if p["ber"] > 0]
        marker, text = styles[name]
        label = f"{text.format(it=cfg.bp_iterations, ls=cfg.list_size)}, k={res['k']}, N={res['N']}"
        ax.semilogy([p["ebn0_db"] for p in pts], [p["ber"] for p in pts], marker, label=label)
    ax.axhline(cfg.target_ber, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("Eb/N0 (dB)")
    ax.set_ylabel("bit error rate")
    ax.set_ylim(1e-6, 0.5)
    ax.set_title(f"Coded vs uncoded BPSK on AWGN, rate {cfg.rate}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(cfg: Config) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    uncoded = uncoded_ebn0_at(cfg.target_ber)
    curves = {}
    for name, k in (("ldpc", cfg.ldpc_k), ("polar", cfg.polar_k)):
        if k <= 0:
            continue
        link = CodedLink(k, int(round(k / cfg.rate)), code=name, modulation="bpsk",
                         bp_iterations=cfg.bp_iterations, list_size=cfg.list_size)
        curves[name] = simulate(link, cfg, rng, name)
        coded = curves[name]["ebn0_db_at_target"]
        curves[name]["coding_gain_db"] = None if coded is None else round(uncoded - coded, 3)
        if coded is not None:
            curves[name]["ebn0_db_at_target"] = round(coded, 3)
    results = {
        "benchmark": "coded_ber",
        "channel": "AWGN, BPSK, Eb/N0 = 1 / (2 r sigma^2)",
        "torch_threads": torch.get_num_threads(),
        "target_ber": cfg.target_ber,
        "uncoded_ebn0_db_at_target": round(uncoded, 3),
        "curves": curves,
        "config": asdict(cfg),
    }
    if cfg.plot:
        plot(results, cfg, ROOT / cfg.plot)
        results["plot"] = cfg.plot
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field, default in asdict(Config()).items():
        kind = type(default) if default is not None else str
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, default=default)
    print(json.dumps(main(Config(**vars(parser.parse_args()))), indent=2))
