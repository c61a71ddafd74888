"""Training speed and MFU of CALM and the token baseline on one device (bf16 autocast on CUDA), as JSON.

    python bench/gpu_train.py                         # cuda when torch sees one, else cpu (fp32)
    python bench/gpu_train.py --device cpu --sizes m --steps 2 --warmup 1     # the CPU smoke test

For each family (baseline, calm-k2, calm-k4) and backbone size (m: the tiny presets; S: the paper's
Transformer-S width and depth over the same 256-token windows) it times ``--steps`` optimiser steps of the
real training step (the task's loss, backward, AdamW) after ``--warmup`` steps, on random token windows and
randomly initialised models (speed does not depend on the weights). Throughput is tokens/s; achieved FLOP/s
uses the analytic training FLOPs per token of ``calm.flops`` (the same count the scaling study charges), and
MFU divides it by ``--peak-flops`` (default: 989e12, an H200's dense bf16 peak, on CUDA; none on CPU).
Attention is torch's scaled_dot_product_attention (calm.backbone) on every device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calm.autoencoder import preset as ae_preset  # noqa: E402
from calm.baseline import BaselineTask  # noqa: E402
from calm.baseline import preset as baseline_preset  # noqa: E402
from calm.energy_transformer import CalmTask  # noqa: E402
from calm.energy_transformer import preset as calm_preset  # noqa: E402
from calm.flops import baseline_flops, calm_flops  # noqa: E402

SIZES = {
    "m": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=352),
    "S": dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048),
}
AUTOENCODERS = {"calm-k2": ("tiny-k2", {}), "calm-k4": ("tiny", {"latent_dim": 32})}


def make_task(family: str, size: str, vocab: int):
    """A training task with a randomly initialised model (no checkpoint needed)."""
    dims = SIZES[size]
    if family == "baseline":
        return BaselineTask(baseline_preset("tiny", vocab, **dims))
    name, overrides = AUTOENCODERS[family]
    ae = ae_preset(name, vocab_size=vocab, pad_id=0, **overrides)
    return CalmTask(calm_preset(name, ae, **dims, head_intermediate_size=dims["hidden_size"]))


def measure(family: str, size: str, *, vocab: int, batch: int, steps: int, warmup: int, device: torch.device,
            amp: bool) -> dict:
    """Tokens/s and analytic FLOP/s of ``steps`` timed training steps."""
    task = make_task(family, size, vocab)
    model = task.build_model().to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    L = task.tokens_per_example
    gen = torch.Generator(device=device).manual_seed(0)
    ids = torch.randint(4, vocab, (batch, L), device=device, generator=gen)
    per_token = (calm_flops if family != "baseline" else baseline_flops)(task.config).training

    def step() -> float:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = task.loss(model, ids, gen)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        last = step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - t0
    tokens_per_s = steps * batch * L / seconds
    return {"family": family, "size": size, "params": sum(p.numel() for p in model.parameters()), "batch": batch,
            "window_tokens": L, "steps": steps, "seconds": round(seconds, 3), "tokens_per_s": tokens_per_s,
            "train_flops_per_token": per_token, "achieved_flops_per_s": tokens_per_s * per_token,
            "last_loss": last,
            "peak_memory_gib": (torch.cuda.max_memory_allocated(device) / 2**30) if device.type == "cuda" else None}


def main(argv: list[str] | None = None) -> dict:
    """Run every (family, size); print and return the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (cuda when torch sees one)")
    parser.add_argument("--families", nargs="+", default=["baseline", "calm-k2", "calm-k4"],
                        choices=["baseline", "calm-k2", "calm-k4"])
    parser.add_argument("--sizes", nargs="+", default=["m", "S"], choices=sorted(SIZES))
    parser.add_argument("--batch", type=int, default=64, help="windows of 256 tokens per step")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (allocator, kernels)")
    parser.add_argument("--vocab", type=int, default=2048, help="vocabulary size (the study's bpe:2048)")
    parser.add_argument("--peak-flops", type=float, default=None,
                        help="the device's peak FLOP/s for MFU (default: 989e12 on cuda, H200 dense bf16; none on cpu)")
    parser.add_argument("--no-amp", action="store_true", help="fp32 on cuda too (bf16 autocast is the default there)")
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    device = torch.device(args.device)
    amp = device.type == "cuda" and not args.no_amp
    peak = args.peak_flops if args.peak_flops is not None else (989e12 if device.type == "cuda" else None)
    results = []
    for size in args.sizes:
        for family in args.families:
            r = measure(family, size, vocab=args.vocab, batch=args.batch, steps=args.steps, warmup=args.warmup,
                        device=device, amp=amp)
            r["mfu"] = r["achieved_flops_per_s"] / peak if peak else None
            results.append(r)
            print(f"[gpu_train] {family:8s} {size}: {r['tokens_per_s']:,.0f} tokens/s, "
                  f"{r['achieved_flops_per_s'] / 1e12:.2f} TFLOP/s" + (f", MFU {r['mfu']:.1%}" if peak else ""),
                  file=sys.stderr, flush=True)
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "autocast_bf16": amp, "peak_flops": peak, "torch": torch.__version__, "results": results}
    print(json.dumps(out, indent=1), flush=True)
    return out


if __name__ == "__main__":
    main()
