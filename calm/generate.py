"""Generate text from a trained CALM or token-baseline checkpoint.

    python -m calm.generate runs/calm-k4 --prompt "In the beginning" --temperature 0.5 \
        [--max-tokens 64] [--batch-n 64] [--max-draws 1000000] [--samples 1] [--seed 0]

CALM samples one chunk of K tokens per backbone step. With --temperature T = 1/n (0.5, 1/3, ...) it uses
by default the approximate batch sampler with --batch-n draws per chunk; --batch-n 0 (required for any
other T in (0, 1)) selects the exact rejection sampler, which needs about 1 / sum_x P(x)^(1/T) draws per
chunk: cheap for a confident model, hopeless for a diffuse one (it stops with an error after --max-draws).
See docs/sampling.md. The baseline samples softmax(logits / T). The device is
calm.backbone.default_device().
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from calm.backbone import default_device
from calm.sampling import split_temperature

__all__ = ["GenerateConfig", "generate", "main"]


@dataclass
class GenerateConfig:
    """Command-line options of `python -m calm.generate`."""

    checkpoint: str
    """checkpoint directory of a calm or baseline model"""
    prompt: str = "In the beginning"
    """text to continue"""
    max_tokens: int = 64
    """tokens to generate"""
    temperature: float = 1.0
    """sampling temperature in (0, 1]"""
    batch_n: int = 64
    """CALM only, T < 1: draws of the approximate batch sampler (T must be 1/n); 0 for the exact sampler"""
    max_draws: int = 1_000_000
    """CALM only: the exact sampler gives up (error) after this many draws for one chunk"""
    samples: int = 1
    """independent continuations to print"""
    seed: int = 0
    """seed of all sampling noise"""


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt: str,
    max_tokens: int,
    *,
    temperature: float = 1.0,
    batch_n: int = 0,
    samples: int = 1,
    seed: int = 0,
    max_draws: int = 1_000_000,
) -> list[str]:
    """Continue `prompt` `samples` times with a calm or baseline model; returns the generated texts."""
    from calm.baseline import TokenTransformer
    from calm.energy_transformer import EnergyTransformer

    device = next(model.parameters()).device
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    eot = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    if not ids:
        ids = [eot]
    prompt_ids = torch.tensor([ids] * samples, dtype=torch.long, device=device)  # (S, T)
    generator = torch.Generator(device=device).manual_seed(seed)
    if isinstance(model, EnergyTransformer):
        coins = torch.Generator().manual_seed(seed + 1)
        # left-pad a prompt to a multiple of K with the autoencoder's pad, as the agents do
        out = model.generate(prompt_ids, max_tokens, temperature=temperature, batch_n=batch_n,
                             pad_id=model.autoencoder.config.pad_id,
                             generator=generator, coins=coins, max_draws=max_draws)  # fmt: skip
    elif isinstance(model, TokenTransformer):
        out = model.generate(prompt_ids, max_tokens, temperature=temperature, generator=generator)
    else:
        raise ValueError(f"generate: unsupported model type {type(model).__name__}")
    return [tokenizer.decode(row.tolist()) for row in out]


def main(argv: list[str] | None = None) -> list[str]:
    """CLI entry point: load the checkpoint, print the prompt and each continuation."""
    from calm.checkpoint import CheckpointError, load_pretrained
    from calm.cli import OneLineErrorParser
    from calm.files import DamagedFileError

    parser = OneLineErrorParser(prog="python -m calm.generate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="checkpoint directory of a calm or baseline model")
    parser.add_argument("--prompt", default=GenerateConfig.prompt, help="text to continue")
    parser.add_argument("--max-tokens", type=int, default=GenerateConfig.max_tokens, help="tokens to generate")
    parser.add_argument("--temperature", type=float, default=GenerateConfig.temperature, help="in (0, 1]")
    parser.add_argument("--batch-n", type=int, default=GenerateConfig.batch_n,
                        help="CALM, T < 1: N = approximate batch sampler with N draws (T = 1/n); 0 = exact sampler")
    parser.add_argument("--max-draws", type=int, default=GenerateConfig.max_draws,
                        help="CALM: the exact sampler's limit of draws per chunk")
    parser.add_argument("--samples", type=int, default=GenerateConfig.samples, help="continuations to print")
    parser.add_argument("--seed", type=int, default=GenerateConfig.seed, help="seed of the sampling noise")
    cfg = GenerateConfig(**vars(parser.parse_args(argv)))
    if cfg.max_tokens < 1 or cfg.samples < 1 or cfg.max_draws < 1 or cfg.batch_n < 0:
        parser.error("--max-tokens, --samples and --max-draws must be >= 1, --batch-n >= 0")
    if not 0.0 < cfg.temperature <= 1.0:  # NaN fails this too
        parser.error(f"--temperature must be in (0, 1], got {cfg.temperature}")
    n, a = split_temperature(cfg.temperature)
    if cfg.batch_n > 0 and a != 0.0:
        parser.error(f"--batch-n {cfg.batch_n} needs a temperature 1/n (0.5, 0.333.., 0.25, ...), got "
                     f"{cfg.temperature}; pass --batch-n 0 for the exact sampler")
    try:
        model, tokenizer = load_pretrained(cfg.checkpoint, device=default_device(), expect=("calm", "baseline"))
    except (FileNotFoundError, CheckpointError, DamagedFileError) as exc:
        parser.error(str(exc))
    texts = generate(model, tokenizer, cfg.prompt, cfg.max_tokens, temperature=cfg.temperature,
                     batch_n=cfg.batch_n, samples=cfg.samples, seed=cfg.seed, max_draws=cfg.max_draws)  # fmt: skip
    for text in texts:
        print(cfg.prompt + text, flush=True)
    return texts


if __name__ == "__main__":
    main()
