"""Where does K sit? The autoencoder, CALM and the channel at K = 1, 2, 4, 8 (l = 32 K), against the token baseline.

    python -m experiments.scaling_k                 # K 1 2 4 8 x budget 1e12, the baseline, on local Ray
    python -m experiments.scaling_k --full          # K 1 2 4 8 x budgets 1e12 2.5e12
    python -m experiments.scaling_k --help
    python -m experiments.scaling_k --budgets 1e12 2.5e12 6.25e12   # one more budget: same run, more rows

Per K, one autoencoder (the ``tiny`` preset at that K, l = ``latent_per_token`` * K, kl_weight
``ae_kl_weight``; trained once, cached under runs_dir) is scored on the test split: token accuracy from mu
and under noise sigma (the robustness curve), KL per dimension and collapsed dimensions. Its
**communication view** sends L-token passages over AWGN at a fixed number of channel uses per token
(``channel_uses_per_token``: 32 = every coordinate of l = 32 K once, fewer = PCA, ``protocols.vector``) and
reports token accuracy and referential success (the ML receiver over ``num_candidates`` passages); the
separation link (range coding + 5G LDPC/Polar + QAM, oracle MCS) on the same passages and channel uses is the
digital reference. Then an energy transformer per K and the token baseline are each trained to every
training-FLOPs budget (``experiments.common.lm_budget.train_and_score``: calm_scaling's recipe, windows of 256
tokens)
and scored: Brier-1..4 and BrierLM with bootstrap intervals, training and inference FLOPs per token,
generation tokens/s. ``experiments.scaling_k_report`` writes the K table, the BrierLM-vs-FLOPs frontier, the
robustness curves and the link plot. Trials run as Ray Tune grids (autoencoders first); a killed run resumes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from calm.checkpoint import load_pretrained
from calm.checks import in_range, positive_ints
from calm.data import load_token_ids
from calm.evaluate import chunk_stream, evaluate_autoencoder
from calm.files import atomic_write_text, read_json
from calm.flops import autoencoder_flops
from experiments.common.config import SweepConfig, settings_hash, unhashed
from experiments.common.links import fit_protocols, pick_best
from experiments.common.lm_budget import (
    SIZES,
    WINDOW_TOKENS,
    check_budgets,
    check_train_device,
    generation_measure,
    generation_speed,
    train_and_score,
)
from experiments.common.models import (
    K_AUTOENCODER,
    K_KL_WEIGHT,
    K_LATENT_PER_TOKEN,
    checkpoint_id,
    ensure_k_autoencoder,
)
from experiments.common.multiagent import draw_candidates, sigma_of_snr, trial_metrics
from experiments.common.sweep import (
    SweepResult,
    cli,
    collect_rows,
    git_commit,
    make_channel,
    mark_finished,
    missing_trials,
    open_run_dir,
    print_outcome,
    row_listener,
    run_finished,
    start_run_tracking,
    trial_logger,
    write_frame,
)
from experiments.common.tables import mean_interval
from experiments.common.trials import connect_ray, run_trials
from experiments.scaling_k_report import write_report
from protocols import load_protocol
from protocols.separation import load_bank

__all__ = ["AE_COLUMNS", "Config", "LM_COLUMNS", "ae_grid", "lm_grid", "main", "play_link"]

AE_COLUMNS = ["K", "latent_dim", "steps", "token_accuracy", "chunk_accuracy", "noise_token_accuracy", "kl_total",
              "kl_per_dim", "collapsed_dims", "mu_rms", "encoder_flops_per_token", "decoder_flops_per_token",
              "link", "checkpoint"]
LM_COLUMNS = ["family", "K", "size", "budget", "params", "steps", "tokens", "flops", "flops_per_token",
              "inference_flops_per_token", "generate_tokens_per_s", "brier_1", "brier_2", "brier_3", "brier_4",
              "brier_lm", *[f"{s}_ci_{e}" for s in ("brier_1", "brier_2", "brier_3", "brier_4", "brier_lm")
                            for e in ("low", "high")], "on_manifold", "train_seconds", "seed", "per_window"]


@dataclass
class Config(SweepConfig):
    """The K study. Grid axes: ks x budgets (and sizes) for the language models; ks for the autoencoders."""

    FULL: ClassVar[dict[str, Any]] = {"budgets": (1e12, 2.5e12)}

    tokenizer: str = K_AUTOENCODER["tokenizer"]
    """tokenizer of every model (a small vocabulary keeps CPU training cheap)"""
    ks: tuple[int, ...] = unhashed((1, 2, 4, 8))
    """tokens per latent vector K (each divides 256, the window, and passage_length)"""
    latent_per_token: int = K_LATENT_PER_TOKEN
    """l / K: the autoencoder at K has l = latent_per_token * K (the paper's best, l = 32 K)"""
    ae_steps: int = K_AUTOENCODER["ae_steps"]
    """optimiser steps of each autoencoder (tiny preset at that K; cached under runs_dir)"""
    ae_kl_weight: float = K_KL_WEIGHT
    """KL weight of the autoencoders (as in experiments.calm_scaling: a wider posterior for the head to learn)"""
    sizes: tuple[Literal["xs", "s", "m"], ...] = unhashed(("xs",))
    """backbone sizes (experiments.common.lm_budget.SIZES; xs d=64 x 2 layers is the frontier at these budgets)"""
    budgets: tuple[float, ...] = unhashed((1e12,))
    """training-FLOPs budgets every language model is trained to from scratch (analytic, calm.flops); --full adds
    2.5e12. One that would train a model more than 100,000 optimizer steps (lm_budget.MAX_STEPS) is refused
    without --force"""
    batch_size: int = 8
    """windows of 256 tokens per micro-batch, every family"""
    calm_grad_accum: int = 4
    """CALM micro-batches per optimiser step"""
    lr: float = 2e-3
    """peak learning rate (10% warm-up, cosine to 10%), in (0, 1]"""
    eval_windows: int = 32
    """held-out windows of 256 tokens every language model is scored on (the bootstrap resamples them)"""
    brier_samples: int = 4
    """sampled continuations per position in the Brier estimates"""
    generate_tokens: int = 64
    """tokens each of 8 prompts of 16 is continued by when timing generation (at most 240: a 256-token window)"""
    noise_sigmas: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5, 1.0)
    """noise on mu for the autoencoder's robustness curve (the table shows 0.3 and 1.0)"""
    eval_tokens: int = 65536
    """held-out (test split) tokens each autoencoder is scored on"""
    passage_length: int = 16
    """communication view: L, tokens per message (a multiple of every K)"""
    channel_uses_per_token: tuple[int, ...] = (32, 4, 1)
    """communication view: channel uses per token (n = this x L); 32 sends each coordinate of l = 32 K once,
    fewer send the top principal components (referential success saturates at 1.0 above a few per token)"""
    snrs_db: tuple[float, ...] = (20.0, 10.0, 0.0, -10.0)
    """communication view: AWGN SNRs (unit power per channel use), in [-80, 200] dB"""
    episodes: int = 512
    """communication view: passages per (K, channel uses, SNR)"""
    num_candidates: int = 16
    """communication view: referential success among this many passages"""
    num_passages: int = 2000
    """communication view: held-out (test split) passages drawn from"""
    fit_passages: int = 4000
    """communication view: training passages the protocols are fitted on"""
    source_model: Literal["unigram", "bigram"] = "bigram"
    """separation reference: the entropy coder's token model"""
    separation_codes: tuple[Literal["ldpc", "polar"], ...] = ("ldpc", "polar")
    """separation reference: the 5G codes the oracle picks from"""
    pilot_passages: int = 64
    """separation reference: passages each MCS plays before the oracle picks"""
    seed: int = 0
    """seed of every model's initialisation, batches and channel noise"""
    # the study trains its own autoencoders and runs anywhere: neither field names the run
    checkpoint: str | None = unhashed(None)
    """autoencoder checkpoint directory; none: train the tiny one once and cache it under runs_dir"""
    device: Literal["cpu", "cuda"] = unhashed("cpu")
    """where each model trains and is scored. Not part of the run name: give a cuda run its own --run-name"""
    max_concurrent: int = unhashed(2)
    """trials at once (one CPU thread each)"""
    trial_cpus: float = unhashed(1.0)
    """logical CPUs per trial"""
    force: bool = unhashed(False)
    """train budgets above the step limit anyway"""

    def __post_init__(self) -> None:
        super().__post_init__()  # finite numbers, duplicate grid values merged, SNRs in [-80, 200] dB
        if not self.ks or any(not isinstance(k, int) or k < 1 or WINDOW_TOKENS % k or self.passage_length % k
                              for k in self.ks):
            raise ValueError(f"ks must be integers >= 1 dividing {WINDOW_TOKENS} and passage_length "
                             f"({self.passage_length}), got {self.ks}")
        for name in ("latent_per_token", "batch_size", "calm_grad_accum", "generate_tokens", "eval_tokens",
                     "passage_length", "episodes", "num_passages", "fit_passages", "pilot_passages"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.eval_windows < 2 or self.brier_samples < 2 or self.num_candidates < 2:
            raise ValueError("eval_windows, brier_samples and num_candidates must be >= 2")
        if not self.budgets or any(not b > 0 for b in self.budgets):
            raise ValueError(f"budgets must be positive FLOPs, got {self.budgets}")
        if not self.sizes or any(s not in SIZES for s in self.sizes):
            raise ValueError(f"sizes must be a non-empty subset of {tuple(SIZES)}, got {self.sizes}")
        if not self.channel_uses_per_token or any(c < 1 for c in self.channel_uses_per_token):
            raise ValueError(f"channel_uses_per_token must hold integers >= 1, got {self.channel_uses_per_token}")
        in_range("ae_kl_weight", self.ae_kl_weight, 0, 1e3)
        in_range("lr", self.lr, 0, 1, low_open=True)
        in_range("noise_sigmas", self.noise_sigmas, 0, 1e4)
        positive_ints(self, "seed", minimum=0)
        if self.num_candidates > self.num_passages:
            raise ValueError(f"--num-candidates {self.num_candidates} is more than --num-passages {self.num_passages} "
                             "(the candidates are distinct passages)")
        if self.eval_tokens < max(self.ks):
            raise ValueError(f"--eval-tokens {self.eval_tokens} holds no chunk of K = {max(self.ks)}")
        if self.generate_tokens > WINDOW_TOKENS - 16:
            raise ValueError(f"--generate-tokens {self.generate_tokens}: a 16-token prompt plus them must fit the "
                             f"{WINDOW_TOKENS}-token window (at most {WINDOW_TOKENS - 16})")
        check_train_device(self.device)
        fields = {k: v for k, v in (("latent_dim", self.ae_latent_dim), ("hidden_size", self.ae_hidden_size),
                                    ("intermediate_size", self.ae_intermediate_size)) if v is not None}
        check_budgets(self, {f"calm-k{k}": {"name": "tiny", "K": k, "latent_dim": self.latent_per_token * k,
                                            "kl_weight": self.ae_kl_weight, **fields} for k in self.ks})


def ae_grid(cfg: Config) -> list[dict[str, Any]]:
    """One autoencoder trial per K: training (or the cache), held-out scores and its link."""
    return [{"kind": "ae", "K": k, "key": f"ae-k{k}"} for k in sorted(cfg.ks)]


def lm_grid(cfg: Config) -> list[dict[str, Any]]:
    """The separation reference link (on the smallest K's tokenizer: every K shares it), then one language-model
    trial per (family, size, budget), cheapest budget first; the baseline once per budget."""
    families = ["baseline"] + [f"calm-k{k}" for k in sorted(cfg.ks)]
    return [{"kind": "separation", "K": min(cfg.ks), "key": "separation"}] + [
        {"kind": "lm", "family": f, "size": s, "budget": float(b), "key": f"{f}-{s}-C{float(b):.3g}"}
        for b in sorted(cfg.budgets) for f in families for s in cfg.sizes]


def autoencoder_dir(cfg: Config, K: int) -> Path:
    """The K autoencoder (l = latent_per_token * K, ae_kl_weight): trained once and cached under runs_dir."""
    return ensure_k_autoencoder(cfg, K, latent_per_token=cfg.latent_per_token, kl_weight=cfg.ae_kl_weight)


# ---------------------------------------------------------------------------------------------------------
# the communication view


def play_link(protocol: Any, passages: np.ndarray, sigma: float, *, episodes: int, num_candidates: int,
              seed: int) -> dict[str, Any]:
    """Send ``episodes`` held-out passages through AWGN ``sigma`` once: decoded and target ids (B, L), and
    referential success per passage (the channel's ML choice among ``num_candidates`` passages)."""
    rng = np.random.default_rng(seed)
    index = rng.choice(len(passages), size=min(episodes, len(passages)), replace=False)
    target = np.asarray(passages[index], dtype=np.int64)
    channel = make_channel("awgn", sigma)
    received = channel(protocol.encode(target), rng)
    decoded = protocol.decode(received, channel=channel)
    cands, slot = draw_candidates(rng, index, len(passages), num_candidates)
    scores = protocol.score(received, np.asarray(passages[cands], dtype=np.int64), channel=channel)
    return {"decoded": decoded, "target": target, "success": (np.argmax(scores, axis=1) == slot).astype(float)}


def link_rows(cfg: Config, checkpoint: Path, protocols_dir: Path, protocol: str) -> list[dict[str, Any]]:
    """Token accuracy and referential success of ``protocol`` (vector or separation) at every channel-uses
    per token and SNR; separation picks its MCS per point by the oracle's pilot plays."""
    model, tok = load_pretrained(checkpoint)
    L, K = cfg.passage_length, model.config.K
    budgets = [c * L for c in cfg.channel_uses_per_token]
    dirs, variants, _, skipped, passages = fit_protocols(cfg, checkpoint, protocols_dir, protocols=[protocol],
                                                         budgets=budgets)
    rows = []
    for c, n in zip(cfg.channel_uses_per_token, budgets):
        key = f"{protocol}@{n}"
        usable = (protocol, n) not in skipped and bool(variants.get(key))
        # loaded once per budget, played at every SNR
        bank = load_bank(dirs[key]) if usable and protocol == "separation" else None
        vector = load_protocol(dirs[key], autoencoder=model) if usable and bank is None else None
        for snr in cfg.snrs_db:
            sigma, seed = sigma_of_snr(snr), cfg.seed * 1000 + n
            row: dict[str, Any] = {"protocol": protocol, "K": K, "channel_uses_per_token": c, "channel_uses": n,
                                   "snr_db": snr, "mcs": None}
            if not usable:
                rows.append({**row, "token_accuracy": float("nan"), "success": float("nan")})
                continue
            link = vector
            if bank is not None:
                def pilot(mcs: str, bank=bank, sigma=sigma, seed=seed) -> float:
                    out = play_link(bank[mcs], passages, sigma, episodes=cfg.pilot_passages, num_candidates=2,
                                    seed=seed + 1)
                    return float((out["decoded"] == out["target"]).mean())

                row["mcs"] = pick_best(list(bank), pilot)
                link = bank[row["mcs"]]
            out = play_link(link, passages, sigma, episodes=cfg.episodes, num_candidates=cfg.num_candidates, seed=seed)
            row.update(trial_metrics([out["decoded"]], [out["target"]], K, tok))
            row["success"], row["success_ci_low"], row["success_ci_high"] = mean_interval(out["success"])
            rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------------------
# trials


def _ae_trial(spec: dict[str, Any], *, settings: dict[str, Any], run_dir: str) -> dict:
    """One K's autoencoder (trained or cached): held-out scores and its link; or the separation reference."""
    import torch

    torch.set_num_threads(1)
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()})
    K = spec["K"]
    path = autoencoder_dir(cfg, K)
    protocols_dir = Path(run_dir) / "protocols"
    if spec["kind"] == "separation":
        return {"K": 0, "link": json.dumps(link_rows(cfg, path, protocols_dir / "separation", "separation"))}
    model, tok = load_pretrained(path)
    chunks = chunk_stream(load_token_ids(cfg.corpus, tok, "test", progress=False), K, cfg.eval_tokens // K)
    report = evaluate_autoencoder(model, chunks, sigmas=tuple(cfg.noise_sigmas), seed=cfg.seed)
    flops = autoencoder_flops(model.config)
    info = read_json(path / "train_info.json", what="training record") if (path / "train_info.json").exists() else {}
    return {"K": K, "latent_dim": model.config.latent_dim, "steps": info.get("steps_done"),
            "token_accuracy": report.token_accuracy, "chunk_accuracy": report.chunk_accuracy,
            "noise_token_accuracy": json.dumps(report.noise_token_accuracy), "kl_total": report.kl_total,
            "kl_per_dim": json.dumps(report.kl_per_dim), "collapsed_dims": report.collapsed_dims,
            "mu_rms": report.mu_rms, "encoder_flops_per_token": flops["encoder"] / K,
            "decoder_flops_per_token": flops["decoder"] / K,
            "link": json.dumps(link_rows(cfg, path, protocols_dir / f"k{K}", "vector")), "checkpoint": str(path)}


def _lm_trial(spec: dict[str, Any], *, settings: dict[str, Any], autoencoders: dict[str, str]) -> dict:
    row = train_and_score(spec, settings=settings, autoencoders=autoencoders,
                          measure=generation_measure(settings["generate_tokens"]))
    row["K"] = 1 if spec["family"] == "baseline" else int(spec["family"].removeprefix("calm-k"))
    return row


def _trial(spec: dict[str, Any], **shared: Any) -> dict:
    if spec["kind"] == "lm":
        return _lm_trial(spec, settings=shared["settings"], autoencoders=shared["autoencoders"])
    return _ae_trial(spec, settings=shared["settings"], run_dir=shared["run_dir"])


def main(cfg: Config) -> SweepResult:
    """Train and score the missing autoencoders, then the missing language models; write tables and plots."""
    t0 = time.time()
    settings = settings_hash(cfg)
    run_name = cfg.run_name or f"scaling-k-{settings}"
    run_dir = open_run_dir(cfg.results_dir, run_name, settings, None, experiment="scaling-k")
    grids = {"autoencoders": ae_grid(cfg), "language models": lm_grid(cfg)}  # the second needs the first
    total = sum(len(g) for g in grids.values())
    done = total - len(missing_trials(grids["autoencoders"] + grids["language models"], run_dir))
    if done == total and run_finished(run_dir) and not cfg.overwrite:
        print(f"[run] {run_dir} is complete ({done}/{total} rows); its results and reports are kept (--overwrite "
              "rewrites them from the rows)", flush=True)
        return SweepResult(run_dir=run_dir, ran=[], failed=[], rows=done, total=total)
    print(f"[run] reproduce: python -m experiments.scaling_k --run-name {run_name} --ks "
          f"{' '.join(map(str, cfg.ks))} --budgets {' '.join(f'{b:g}' for b in cfg.budgets)} --sizes "
          f"{' '.join(cfg.sizes)}", flush=True)
    # absolute paths: a Tune trial runs in its own working directory
    shared = {"settings": asdict(replace(cfg, runs_dir=str(Path(cfg.runs_dir).expanduser().resolve()))),
              "run_dir": str(run_dir), "autoencoders": {}}
    tracker = start_run_tracking(cfg, run_dir, run_name, "scaling-k", settings_hash=settings)
    failed: list[str] = []
    connected = started = False
    attempted: list[str] = []
    try:
        for phase, grid in grids.items():
            if phase == "language models":  # every K's autoencoder exists now (cached by the first phase)
                shared["autoencoders"] = {f"calm-k{k}": str(autoencoder_dir(cfg, k)) for k in cfg.ks}
                atomic_write_text(run_dir / "config.json", json.dumps(
                    {**asdict(cfg), "settings_hash": settings, "git_commit": git_commit(),
                     "autoencoders": {f: checkpoint_id(Path(p)) for f, p in shared["autoencoders"].items()}},
                    indent=2) + "\n")
            missing = missing_trials(grid, run_dir, cfg.max_trials)
            print(f"[run] {run_dir}: {phase}: {len(grid) - len(missing)} of {len(grid)} done; running {len(missing)} "
                  f"({cfg.max_concurrent} at once)", flush=True)
            attempted += [spec["key"] for spec in missing]
            if missing:
                if not connected:
                    started, connected = connect_ray(cfg.address, cfg.num_cpus), True
                with row_listener(trial_logger(tracker, grid)):
                    failed += run_trials(_trial, missing, run_dir, trial_cpus=cfg.trial_cpus,
                                         max_concurrent=cfg.max_concurrent, shared=shared)
            if phase == "autoencoders" and any(not (run_dir / "rows" / f"{s['key']}.json").is_file() for s in grid):
                break  # a language model needs its autoencoder: rerun once they exist
    finally:
        if started:
            import ray

            ray.shutdown()
    links = [s for s in grids["language models"] if s["kind"] == "separation"]
    ae_frame = collect_rows(grids["autoencoders"] + links, run_dir, AE_COLUMNS)
    lm_frame = collect_rows([s for s in grids["language models"] if s["kind"] == "lm"], run_dir, LM_COLUMNS)
    write_frame(lm_frame, run_dir)
    atomic_write_text(run_dir / "autoencoders.csv", ae_frame.to_csv(index=False))
    speeds = None
    if len(lm_frame) == len([s for s in grids["language models"] if s["kind"] == "lm"]) and shared["autoencoders"]:
        speeds = generation_speed(cfg, shared["autoencoders"])
        atomic_write_text(run_dir / "generation.json", json.dumps(speeds, indent=2) + "\n")
    if len(ae_frame) or len(lm_frame):
        write_report(ae_frame, lm_frame, run_dir, plots=cfg.plots, ae_batch_size=cfg.ae_batch_size, speeds=speeds)
    rows = len(ae_frame) + len(lm_frame)
    ran = [k for k in attempted if (run_dir / "rows" / f"{k}.json").is_file()]
    mark_finished(run_dir, rows == total, grid=grids["autoencoders"] + grids["language models"])
    print_outcome(rows, total, run_dir, time.time() - t0, failed)
    return SweepResult(run_dir=run_dir, ran=ran, failed=failed, rows=rows, total=total)


if __name__ == "__main__":
    raise SystemExit(cli(main, Config, prog="python -m experiments.scaling_k", description=__doc__.split("\n\n")[0]))
