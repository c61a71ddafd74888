"""The main experiment: the text referential game over a noisy channel, vector vs token protocols.

    python -m experiments.referential_game                     # default sweep, local Ray
    python -m experiments.referential_game --help
    ray submit cluster.yaml experiments/referential_game.py -- --sigmas 0 0.5 1 2

One trial = one (protocol, receiver, sigma, seed): ``episodes`` games of the referential game
(DESIGN.md section 2) played by a speaker and a listener agent (``agents.CALMAgent`` Ray actors) at
the same channel-use budget for every protocol; its row holds the DESIGN.md section 7 metrics.
Ray Tune runs the grid (a function trainable); every finished row is written at once to
``results/<run>/rows/``, so rerunning the same command runs only the missing trials. The run
directory also gets ``config.json`` (full config, git commit, checkpoint, Ray/torch versions),
``results.csv`` (+ ``.parquet``), ``summary.md`` and two plots.

Sections: config; Ray and the package; autoencoder; protocols; one trial; the sweep; tables and plots;
main. Dim letters: B games per env step, C candidates, L tokens per passage, n channel uses.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

# `ray submit` ships only this file: find the repository that file_mounts put on the node when the
# package is not installed (it is, with the setup_commands of cluster.yaml; this is the fallback)
try:
    import agents  # noqa: F401
except ImportError:  # pragma: no cover - only on a node without the package installed
    for _root in (os.environ.get("LATENTCOMM_ROOT"), os.path.expanduser("~/latentcomm")):
        if _root and os.path.isdir(os.path.join(_root, "agents")):
            sys.path.insert(0, _root)
            os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_root, os.environ.get("PYTHONPATH")]))
            break

import numpy as np

from agents import AgentConfig, ListenerPolicy, SpeakerPolicy, make_agent
from experiments.cli import parse_config

__all__ = ["COLUMNS", "Config", "SweepResult", "main", "play_trial", "trial_grid"]

ProtocolName = Literal["vector", "token", "quantized"]
ReceiverName = Literal["soft", "hard"]

# DESIGN.md section 7, in this order
COLUMNS = [
    "protocol", "receiver", "channel", "sigma", "snr_db", "channel_uses", "candidates", "nominal_bits",
    "capacity_bits", "success", "success_ci_low", "success_ci_high", "delivered_bits", "efficiency",
    "token_accuracy", "episodes", "seed", "checkpoint",
]
NAMESPACE = "latentcomm"


# ---------------------------------------------------------------------------------------------------------
# config


@dataclass
class Config:
    """The referential-game sweep. Grid axes: sigmas x protocols x receivers x seeds."""

    run_name: str | None = None
    """run directory name under results_dir; default referential-<hash of the settings that change rows>"""
    results_dir: str = "results"
    """where run directories go"""
    runs_dir: str = "runs"
    """where the autoencoder trained when no checkpoint is given is cached"""
    checkpoint: str | None = None
    """autoencoder checkpoint directory; none: train the tiny one once and cache it under runs_dir"""
    corpus: str = "kjv+shakespeare"
    """corpus of passages and autoencoder training data (see calm.data)"""
    tokenizer: str = "bpe:8192"
    """tokenizer spec when training an autoencoder (a checkpoint brings its own)"""
    ae_preset: str = "tiny"
    """autoencoder size preset (calm.autoencoder.PRESETS) when training one"""
    ae_latent_dim: int | None = None
    """override the preset's latent size l"""
    ae_hidden_size: int | None = None
    """override the preset's width d"""
    ae_intermediate_size: int | None = None
    """override the preset's SwiGLU width"""
    ae_steps: int = 3000
    """optimiser steps when training the autoencoder"""
    ae_batch_size: int = 256
    """sequences (chunks of K tokens) per autoencoder training step"""
    ae_time_limit: float = 0.0
    """stop autoencoder training after this many seconds (0: no limit). A limit makes the learning-rate
    schedule follow the clock, so the weights (and every result) then depend on the machine's speed"""
    ae_seed: int = 0
    """seed of autoencoder training and of the passage draws"""
    passage_length: int = 16
    """L, tokens per message (a multiple of the autoencoder's K)"""
    candidates: int = 8
    """C, candidates per game (target + C-1 distractors)"""
    distractors: Literal["uniform", "hard"] = "uniform"
    """how distractors are drawn (hard: most shared tokens with the target)"""
    channel_uses: int = 32
    """n, the channel-use budget every protocol is fitted to (equal bandwidth)"""
    quantized_bits: int = 2
    """bits per latent dimension of the quantized protocol"""
    sigmas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.316, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)
    """AWGN noise standard deviations (SNR_dB = -20 log10 sigma: inf, 20, 14, 10, 6, 2.5, 0, -1.9, -3.5, -6)"""
    protocols: tuple[ProtocolName, ...] = ("vector", "token", "quantized")
    """protocols to compare"""
    receivers: tuple[ReceiverName, ...] = ("soft", "hard")
    """soft: maximum likelihood over candidates; hard: decode to tokens, then match"""
    seeds: tuple[int, ...] = (0, 1, 2)
    """game and noise seeds (each seed: the same games and noise draws for every protocol)"""
    episodes: int = 256
    """games per trial"""
    batch_size: int = 256
    """games per env step (one forward pass per agent)"""
    num_passages: int = 2000
    """held-out (test split) passages the games draw from"""
    fit_passages: int = 4000
    """training passages the protocols' normalisation (and PCA) is fitted on"""
    agent_pairs: int = 1
    """speaker/listener actor pairs serving the trials"""
    num_gpus: str = "auto"
    """GPUs per agent actor: auto (1 or a share where Ray sees GPUs, else 0) or a number"""
    address: str = "auto"
    """Ray: auto joins a running cluster (RAY_ADDRESS or `ray start`) else starts a local one; local; or an address"""
    num_cpus: int | None = None
    """CPUs of a local Ray (default: all cores)"""
    max_concurrent: int = 2
    """trials running at once"""
    trial_cpus: float = 0.5
    """logical CPUs per trial (the env and driver loop; the models run in the agents)"""
    max_trials: int | None = None
    """run at most this many of the missing trials, then stop (a rerun continues)"""
    plots: bool = True
    """write the PNG plots"""

    def __post_init__(self) -> None:
        positive = ("ae_steps", "ae_batch_size", "passage_length", "channel_uses", "quantized_bits", "episodes", "batch_size",
                    "num_passages", "fit_passages", "agent_pairs", "max_concurrent")
        for name in positive:
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not (isinstance(self.candidates, int) and self.candidates >= 2):
            raise ValueError(f"candidates must be an integer >= 2, got {self.candidates!r}")
        if self.episodes % min(self.batch_size, self.episodes):
            raise ValueError(f"episodes ({self.episodes}) must be a multiple of batch_size ({self.batch_size})")
        if self.num_passages < self.candidates:
            raise ValueError(f"num_passages must be >= candidates ({self.candidates}), got {self.num_passages}")
        for s in self.sigmas:
            if not (math.isfinite(s) and s >= 0):
                raise ValueError(f"sigmas must be finite and >= 0, got {s}")
        for name, allowed in (("protocols", ("vector", "token", "quantized")), ("receivers", ("soft", "hard"))):
            bad = [v for v in getattr(self, name) if v not in allowed]
            if bad or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {getattr(self, name)}")
        if not self.sigmas or not self.seeds:
            raise ValueError("sigmas and seeds must each hold at least one value")
        if self.num_gpus != "auto":
            try:
                if float(self.num_gpus) < 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"num_gpus must be 'auto' or a number >= 0, got {self.num_gpus!r}") from None
        if not self.ae_time_limit >= 0:
            raise ValueError(f"ae_time_limit must be >= 0 seconds, got {self.ae_time_limit}")
        if not self.trial_cpus > 0:
            raise ValueError(f"trial_cpus must be > 0, got {self.trial_cpus}")
        if self.max_trials is not None and self.max_trials < 0:
            raise ValueError(f"max_trials must be >= 0 or none, got {self.max_trials}")
        if self.run_name is not None and (not self.run_name or "/" in self.run_name):
            raise ValueError(f"run_name must be a non-empty name without '/', got {self.run_name!r}")


# fields that neither change a row nor name the run: where things go and how fast they run
_NOT_IN_HASH = {"run_name", "results_dir", "runs_dir", "agent_pairs", "num_gpus", "address", "num_cpus",
                "max_concurrent", "trial_cpus", "max_trials", "plots",
                # grid axes: a rerun with more sigmas/seeds adds rows to the same run
                "sigmas", "protocols", "receivers", "seeds"}


def settings_hash(cfg: Config) -> str:
    """Hash of every setting that changes a row's value (not the grid axes, not placement)."""
    key = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_HASH}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------------------------------------
# Ray and the package


def connect_ray(cfg: Config) -> bool:
    """Join or start Ray as ``cfg.address`` says (``calm.ray_runtime.init_ray``); True when it started one."""
    from calm.ray_runtime import init_ray

    # ray submit fallback: the package is on sys.path only through our insert; pass it to workers
    runtime_env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}} if "PYTHONPATH" in os.environ else None
    return init_ray(address=cfg.address, num_cpus=cfg.num_cpus, namespace=NAMESPACE, runtime_env=runtime_env)


def git_commit() -> str:
    """The repository's commit (with -dirty), or unknown outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ---------------------------------------------------------------------------------------------------------
# autoencoder


def checkpoint_id(directory: Path) -> str:
    """``<dir name>@<sha256[:12] of model.safetensors>``: names a checkpoint wherever it lives."""
    h = hashlib.sha256()
    with open(directory / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"{directory.name}@{h.hexdigest()[:12]}"


def ensure_checkpoint(cfg: Config) -> Path:
    """The autoencoder checkpoint: ``cfg.checkpoint``, or one trained once and cached under ``runs_dir``."""
    if cfg.checkpoint is not None:
        path = Path(cfg.checkpoint).expanduser()
        if not (path / "model.safetensors").is_file():
            raise ValueError(f"checkpoint {cfg.checkpoint!r} holds no model.safetensors (a calm.checkpoint directory)")
        return path.resolve()
    from calm.autoencoder import preset
    from calm.checkpoint import save_pretrained
    from calm.data import load_token_ids
    from calm.tokenizer import get_tokenizer, special_ids
    from calm.train import train_autoencoder

    tok = get_tokenizer(cfg.tokenizer, cfg.corpus)
    pad_id, _ = special_ids(tok)
    overrides = {k: v for k, v in (("latent_dim", cfg.ae_latent_dim), ("hidden_size", cfg.ae_hidden_size),
                                   ("intermediate_size", cfg.ae_intermediate_size)) if v is not None}
    ae_cfg = preset(cfg.ae_preset, vocab_size=len(tok), pad_id=pad_id, **overrides)
    key = {"ae": ae_cfg.to_dict(), "corpus": cfg.corpus, "tokenizer": cfg.tokenizer, "steps": cfg.ae_steps,
           "batch_size": cfg.ae_batch_size, "time_limit": cfg.ae_time_limit, "seed": cfg.ae_seed}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]
    path = (Path(cfg.runs_dir).expanduser() / f"ae-{cfg.ae_preset}-{digest}").resolve()
    if (path / "model.safetensors").is_file():
        print(f"[ae] using the cached autoencoder {path}", flush=True)
        return path
    limit = f", at most {cfg.ae_time_limit:.0f} s" if cfg.ae_time_limit > 0 else ""
    print(f"[ae] training the {cfg.ae_preset} autoencoder ({cfg.ae_steps} steps{limit}); "
          f"cached at {path}", flush=True)
    train_ids = load_token_ids(cfg.corpus, tok, "train")
    val_ids = load_token_ids(cfg.corpus, tok, "validation")
    t0 = time.time()
    model = train_autoencoder(ae_cfg, train_ids, steps=cfg.ae_steps, val_ids=val_ids, seed=cfg.ae_seed,
                              progress=True, time_limit=cfg.ae_time_limit, batch_size=cfg.ae_batch_size,
                              val_size=2048)
    seconds = time.time() - t0
    accuracy = reconstruction_accuracy(model, val_ids, ae_cfg.K)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_pretrained(model, tmp, tok)
    (tmp / "train_info.json").write_text(json.dumps({**key, "seconds": seconds, "steps_done": model.trained_steps,
                                                     "val_token_accuracy": accuracy},
                                                    indent=2) + "\n")
    tmp.replace(path)  # atomic: a half-written checkpoint is never picked up
    print(f"[ae] trained {model.trained_steps} steps in {seconds:.0f} s; held-out token accuracy {accuracy:.4f}"
          + (" (--ae-time-limit: the weights depend on this machine's speed)" if cfg.ae_time_limit > 0 else ""),
          flush=True)
    return path


def reconstruction_accuracy(model, ids: np.ndarray, K: int, *, tokens: int = 32768) -> float:
    """Greedy token accuracy of ``model.reconstruct`` on the first ``tokens`` ids of a stream."""
    import torch

    n = min(len(ids), tokens) // (8 * K) * (8 * K)
    x = torch.as_tensor(np.asarray(ids[:n], dtype=np.int64).reshape(-1, 8 * K))  # (B, 8K)
    with torch.inference_mode():
        return float((model.reconstruct(x) == x).float().mean())


# ---------------------------------------------------------------------------------------------------------
# protocols


def fit_protocols(cfg: Config, checkpoint: Path, run_dir: Path) -> tuple[dict[str, str], dict[str, Any], np.ndarray]:
    """Fit (or reload) every protocol at the budget; draw the held-out game passages.

    Returns:
        ``(protocol name -> saved dir, facts per protocol (n, nominal bits, V, K, l), passages (N, L))``.
    """
    from calm.checkpoint import load_pretrained
    from calm.data import load_token_ids, make_passages
    from protocols import load_protocol, make_protocol

    model, tok = load_pretrained(checkpoint)
    K, ell, V = model.config.K, model.config.latent_dim, model.config.vocab_size
    L = cfg.passage_length
    if L % K:
        raise ValueError(f"passage_length must be a multiple of the autoencoder's K={K}, got {L}")
    train = make_passages(load_token_ids(cfg.corpus, tok, "train", progress=False), L,
                          max_passages=cfg.fit_passages, seed=cfg.ae_seed)
    test = make_passages(load_token_ids(cfg.corpus, tok, "test", progress=False), L,
                         max_passages=cfg.num_passages, seed=cfg.ae_seed + 1)
    n = cfg.channel_uses
    # nominal payload per message (DESIGN.md section 3): bits before any channel coding
    nominal = {"vector": L // K * ell * 32, "token": L * math.log2(V), "quantized": L // K * ell * cfg.quantized_bits}
    dirs, facts = {}, {}
    for name in cfg.protocols:
        d = run_dir / "protocols" / name
        if (d / "protocol.json").is_file():
            p = load_protocol(d, autoencoder=model)
        else:
            p = make_protocol(name, model, budget=n, quantized_bits=cfg.quantized_bits).fit(train)
            p.save(d)
        uses = p.channel_uses(L)
        if uses != n:
            raise ValueError(f"protocol {name} takes {uses} channel uses, not the budget {n}")
        dirs[name] = str(d)
        facts[name] = {"channel_uses": uses, "nominal_bits": float(nominal[name])}
    facts["_model"] = {"K": K, "latent_dim": ell, "vocab_size": V}
    return dirs, facts, test


# ---------------------------------------------------------------------------------------------------------
# one trial


def trial_key(spec: dict[str, Any]) -> str:
    """File-name-safe key of a grid point: ``<protocol>-<receiver>-s<sigma>-seed<seed>``."""
    return f"{spec['protocol']}-{spec['receiver']}-s{spec['sigma']!r}-seed{spec['seed']}"


def trial_grid(cfg: Config) -> list[dict[str, Any]]:
    """Every grid point, in a fixed order; ``index`` picks the agent pair."""
    grid = [{"protocol": p, "receiver": r, "sigma": float(s), "seed": int(seed)}
            for p in cfg.protocols for r in cfg.receivers for s in cfg.sigmas for seed in cfg.seeds]
    for i, spec in enumerate(grid):
        spec["index"] = i
        spec["key"] = trial_key(spec)
    return grid


def game_seed(seed: int, step: int) -> int:
    """Seed of env step ``step`` of a trial: the same games and noise for every protocol and sigma."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def play_trial(spec: dict[str, Any], speaker: Any, listener: Any, passages: np.ndarray, settings: dict[str, Any]) -> dict:
    """Play ``settings["episodes"]`` games at one grid point and return its results row.

    Args:
        spec: the grid point (protocol, receiver, sigma, seed).
        speaker, listener: agents (actor handles or ``CALMAgentCore``) that loaded the protocol.
        passages: held-out passages ``(N, L)`` the games draw from.
        settings: episodes, batch_size, candidates, distractors, vocab_size, facts, checkpoint.

    Returns:
        A dict with exactly the ``COLUMNS`` keys.
    """
    import environments
    from protocols.metrics import capacity_bits, efficiency, fano_delivered_bits, snr_db, wilson_interval

    protocol, receiver, sigma, seed = spec["protocol"], spec["receiver"], spec["sigma"], spec["seed"]
    n = settings["facts"][protocol]["channel_uses"]
    C, episodes = settings["candidates"], settings["episodes"]
    B = min(settings["batch_size"], episodes)
    env = environments.make("referential_v0", passages=passages, channel_uses=n, batch_size=B, num_candidates=C,
                            channel=environments.AWGN(sigma), distractors=settings["distractors"],
                            vocab_size=settings["vocab_size"])
    speak = SpeakerPolicy(speaker, protocol)
    listen = ListenerPolicy(listener, protocol, receiver)
    wins, token_hits, tokens = 0, 0, 0
    for step in range(episodes // B):
        obs, _ = env.reset(seed=game_seed(seed, step))
        target = obs["speaker"]  # (B, L)
        obs, *_ = env.step({"speaker": speak.act(target)})
        choice, decoded = listen.act(obs["listener"])  # (B,), (B, L)
        _, _, _, _, infos = env.step({"listener": choice})
        wins += int(infos["listener"]["reward_per_game"].sum())
        token_hits += int((decoded == target).sum())
        tokens += target.size
    success = wins / episodes
    low, high = wilson_interval(wins, episodes)
    capacity = capacity_bits(n, sigma)
    delivered = fano_delivered_bits(success, C)
    row = {
        "protocol": protocol, "receiver": receiver, "channel": "awgn", "sigma": sigma, "snr_db": snr_db(sigma) + 0.0,
        "channel_uses": n, "candidates": C, "nominal_bits": settings["facts"][protocol]["nominal_bits"],
        "capacity_bits": capacity, "success": success, "success_ci_low": low, "success_ci_high": high,
        "delivered_bits": delivered, "efficiency": efficiency(delivered, capacity), "token_accuracy": token_hits / tokens,
        "episodes": episodes, "seed": seed, "checkpoint": settings["checkpoint"],
    }
    return {k: row[k] for k in COLUMNS}


def _trainable(config: dict, *, pairs: list, passages: np.ndarray, settings: dict) -> None:
    """Ray Tune function trainable: one grid point -> one reported row."""
    from ray import tune

    spec = config["trial"]
    speaker, listener = pairs[spec["index"] % len(pairs)]
    row = play_trial(spec, speaker, listener, passages, settings)
    tune.report({"key": spec["key"], "success": row["success"], "row_json": json.dumps(row)})


# ---------------------------------------------------------------------------------------------------------
# the sweep


def _row_writer(rows_dir: Path):
    """A Tune callback (in the driver) that writes each trial's row to ``rows_dir/<key>.json`` at once."""
    from ray import tune

    class RowWriter(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "row_json" not in result:
                return
            path = rows_dir / f"{result['key']}.json"
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(result["row_json"] + "\n")
            tmp.replace(path)  # atomic: a row is either complete or absent

    return RowWriter()


def run_sweep(cfg: Config, missing: list[dict], run_dir: Path, pairs: list, passages: np.ndarray,
              settings: dict) -> list[str]:
    """Run the ``missing`` grid points with Ray Tune; returns the keys of trials that failed."""
    from ray import tune

    rows_dir = run_dir / "rows"
    trainable = tune.with_resources(tune.with_parameters(_trainable, pairs=pairs, passages=passages, settings=settings),
                                    {"cpu": cfg.trial_cpus})
    name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    # Tune's new console engine prints its experiment box and result paths even at verbose=0 (Ray 2.60);
    # the legacy one (Ray's documented switch) stays silent, and our own lines say where rows go
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner = tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(missing)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str((run_dir / "tune").resolve()),
            failure_config=tune.FailureConfig(max_failures=2),
            callbacks=[_row_writer(rows_dir)],
            verbose=0,
        ),
    )
    grid = tuner.fit()
    failed = []
    for result in grid:
        if result.error is not None:
            failed.append(str(result.config["trial"]["key"]))
    return failed


@dataclass
class SweepResult:
    """What ``main`` returns."""

    run_dir: Path
    """results/<run>"""
    ran: list[str]
    """keys of the trials this call ran"""
    failed: list[str]
    """keys of trials that failed after retries (rerun to retry them)"""
    rows: int
    """rows in results.csv"""
    total: int
    """grid points (rows < total: the sweep was interrupted or trials failed; rerun to finish)"""


def main(cfg: Config) -> SweepResult:
    """Run (or resume) the sweep and write the run directory; prints the summary table."""
    import ray

    t0 = time.time()
    # -------- the grid and what is left of it (seeds live in the grid: game_seed(seed, step) per env step)
    grid = trial_grid(cfg)
    # the checkpoint first: its weights name the run too, so a retrained autoencoder never mixes with old rows
    # or reuses protocols fitted on other weights
    checkpoint = ensure_checkpoint(cfg)
    ckpt_id = checkpoint_id(checkpoint)
    run_name = cfg.run_name or f"referential-{settings_hash(cfg)}-{ckpt_id.rsplit('@', 1)[1][:6]}"
    run_dir = (Path(cfg.results_dir).expanduser() / run_name).resolve()
    rows_dir = run_dir / "rows"
    rows_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir / "config.json"
    if config_path.is_file():
        before = json.loads(config_path.read_text())
        if before.get("settings_hash") != settings_hash(cfg):
            raise ValueError(f"{run_dir} holds a run with different settings (hash {before.get('settings_hash')} != "
                             f"{settings_hash(cfg)}); pick another --run-name or the same settings")
        if before.get("checkpoint_id") not in (None, ckpt_id):
            raise ValueError(f"{run_dir} holds rows and protocols of checkpoint {before['checkpoint_id']}, not "
                             f"{ckpt_id} (retrained or replaced); pick another --run-name or remove {run_dir}")
    done = {p.stem for p in rows_dir.glob("*.json")}
    missing = [spec for spec in grid if spec["key"] not in done]
    if cfg.max_trials is not None:
        missing = missing[: cfg.max_trials]
    print(f"[run] {run_dir}: {len(grid)} trials in the grid ({len(cfg.protocols)} protocols x {len(cfg.receivers)} "
          f"receivers x {len(cfg.sigmas)} sigmas x {len(cfg.seeds)} seeds), {len(grid) - len(missing)} done, "
          f"{len(missing)} to run; {cfg.episodes} games each, n={cfg.channel_uses} channel uses, C={cfg.candidates}",
          flush=True)

    # the data every game draws from, in the checkpoint's own tokens
    from calm.data import corpus_stats, format_corpus_stats

    tokenizer_file = str(checkpoint / "tokenizer.json")
    print(format_corpus_stats(corpus_stats(cfg.corpus, tokenizer_file), cfg.corpus, f"of {ckpt_id}"), flush=True)
    dirs, facts, passages = fit_protocols(cfg, checkpoint, run_dir)
    model_facts = facts.pop("_model")

    import torch

    record = {
        "config": asdict(cfg), "settings_hash": settings_hash(cfg), "git_commit": git_commit(),
        "checkpoint": str(checkpoint), "checkpoint_id": ckpt_id, "autoencoder": model_facts,
        "protocols": facts, "ray_version": ray.__version__, "torch_version": torch.__version__,
        "python": sys.version.split()[0], "columns": COLUMNS,
    }
    train_info = checkpoint / "train_info.json"
    if train_info.is_file():
        record["autoencoder_training"] = json.loads(train_info.read_text())
    config_path.write_text(json.dumps(record, indent=2) + "\n")

    ran, failed = [], []
    if missing:
        started = connect_ray(cfg)
        pairs: list = []
        try:
            agent_cfg = AgentConfig(checkpoint=str(checkpoint), protocols=dirs,
                                    num_gpus="auto" if cfg.num_gpus == "auto" else float(cfg.num_gpus))
            n_agents = 2 * cfg.agent_pairs
            pairs = [(make_agent(agent_cfg, name=f"{run_name}-speaker{i}", num_agents=n_agents),
                      make_agent(agent_cfg, name=f"{run_name}-listener{i}", num_agents=n_agents))
                     for i in range(cfg.agent_pairs)]
            for placement in ray.get([a.placement.remote() for pair in pairs for a in pair]):
                print(f"[agents] {placement['name']}: device {placement['device']}, GPU ids {placement['gpu_ids']}, "
                      f"pid {placement['pid']}", flush=True)
            settings = {"episodes": cfg.episodes, "batch_size": cfg.batch_size, "candidates": cfg.candidates,
                        "distractors": cfg.distractors, "vocab_size": model_facts["vocab_size"], "facts": facts,
                        "checkpoint": ckpt_id}
            failed = run_sweep(cfg, missing, run_dir, pairs, passages, settings)
            # what finished now (an interrupted sweep, ^C, leaves the rest for the next run)
            ran = [spec["key"] for spec in missing if (rows_dir / f"{spec['key']}.json").is_file()]
        finally:
            for pair in pairs:
                for actor in pair:
                    ray.kill(actor, no_restart=True)
            if started:
                ray.shutdown()

    # -------- tables and plots from every finished row of this grid
    frame = collect_rows(grid, rows_dir)
    write_results(frame, run_dir, plots=cfg.plots)
    # DESIGN.md section 3: delivered bits above capacity (beyond sampling error) mean a leak in a protocol
    if len(frame):
        from protocols.metrics import fano_delivered_bits

        floor = np.array([fano_delivered_bits(low, c) for low, c in zip(frame.success_ci_low, frame.candidates)])
        leaks = frame[floor > frame.capacity_bits.to_numpy() + 1e-9]
        for r in leaks.itertuples():
            print(f"[run] WARNING: {r.protocol}/{r.receiver} at sigma {r.sigma} delivers >= {fano_delivered_bits(r.success_ci_low, r.candidates):.2f} "
                  f"bits over a {r.capacity_bits:.2f}-bit channel: a protocol leaks information", flush=True)
    summary = summary_table(frame)
    print(summary, flush=True)
    print(f"[run] {len(frame)}/{len(grid)} rows in {run_dir / 'results.csv'} ({time.time() - t0:.0f} s)", flush=True)
    if failed:
        print(f"[run] {len(failed)} trials failed ({', '.join(failed[:5])}...): rerun the same command to retry them",
              flush=True)
    if len(frame) < len(grid):
        print(f"[run] incomplete: {len(grid) - len(frame)} grid points have no row yet; rerun the same command",
              flush=True)
    return SweepResult(run_dir=run_dir, ran=ran, failed=failed, rows=len(frame), total=len(grid))


# ---------------------------------------------------------------------------------------------------------
# tables and plots


def collect_rows(grid: list[dict], rows_dir: Path):
    """The rows of ``grid`` that exist, one per grid point, in grid order, as a DataFrame of ``COLUMNS``."""
    import pandas as pd

    rows = []
    for spec in grid:
        path = rows_dir / f"{spec['key']}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
    return pd.DataFrame(rows, columns=COLUMNS)


def write_results(frame, run_dir: Path, *, plots: bool = True) -> None:
    """``results.csv`` (+ ``results.parquet`` when pyarrow is there), ``summary.md`` and the plots."""
    frame.to_csv(run_dir / "results.csv", index=False)
    try:
        frame.to_parquet(run_dir / "results.parquet", index=False)
    except ImportError:
        pass
    (run_dir / "summary.md").write_text(
        f"# Referential game: {run_dir.name}\n\nSuccess pooled over seeds (95% Wilson interval); bits per message.\n\n"
        + summary_table(frame) + "\n")
    if plots and len(frame):
        plot_results(frame, run_dir)


def pooled(frame):
    """Rows pooled over seeds per (protocol, receiver, sigma): success with a Wilson interval, mean bits."""
    import pandas as pd

    from protocols.metrics import fano_delivered_bits, wilson_interval

    out = []
    for (protocol, receiver, sigma), g in frame.groupby(["protocol", "receiver", "sigma"], sort=False):
        wins = int(round((g["success"] * g["episodes"]).sum()))
        games = int(g["episodes"].sum())
        low, high = wilson_interval(wins, games)
        C = int(g["candidates"].iloc[0])
        out.append({"protocol": protocol, "receiver": receiver, "sigma": sigma, "snr_db": g["snr_db"].iloc[0],
                    "success": wins / games, "low": low, "high": high, "games": games,
                    "delivered_bits": fano_delivered_bits(wins / games, C),
                    "capacity_bits": g["capacity_bits"].iloc[0], "token_accuracy": g["token_accuracy"].mean()})
    return pd.DataFrame(out)


def summary_table(frame) -> str:
    """A markdown table of the pooled rows."""
    if not len(frame):
        return "(no rows)"
    lines = ["| protocol | receiver | sigma | SNR dB | success (95% CI) | delivered bits | capacity bits | token acc |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in pooled(frame).itertuples():
        snr = "inf" if math.isinf(r.snr_db) else f"{r.snr_db:.1f}"
        cap = "inf" if math.isinf(r.capacity_bits) else f"{r.capacity_bits:.1f}"
        lines.append(f"| {r.protocol} | {r.receiver} | {r.sigma:g} | {snr} | {r.success:.3f} ({r.low:.3f}-{r.high:.3f}) "
                     f"| {r.delivered_bits:.2f} | {cap} | {r.token_accuracy:.3f} |")
    return "\n".join(lines)


def plot_results(frame, run_dir: Path) -> None:
    """``success_vs_snr.png`` (bands: 95% Wilson) and ``delivered_vs_capacity.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = pooled(frame)
    finite = table["snr_db"][np.isfinite(table["snr_db"])]
    inf_at = (finite.max() + 6.0) if len(finite) else 30.0  # where sigma = 0 (SNR inf) is drawn
    colors = {"vector": "tab:blue", "token": "tab:orange", "quantized": "tab:green"}
    styles = {"soft": "-", "hard": "--"}
    C = int(frame["candidates"].iloc[0])

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (protocol, receiver), g in table.groupby(["protocol", "receiver"], sort=False):
        x = np.where(np.isinf(g["snr_db"]), inf_at, g["snr_db"])
        order = np.argsort(x)
        ax.plot(x[order], g["success"].to_numpy()[order], styles.get(receiver, "-"), marker="o", ms=3,
                color=colors.get(protocol), label=f"{protocol} / {receiver}")
        ax.fill_between(x[order], g["low"].to_numpy()[order], g["high"].to_numpy()[order], alpha=0.15,
                        color=colors.get(protocol))
    ax.axhline(1.0 / C, color="gray", lw=0.8, ls=":", label=f"chance (1/{C})")
    ax.set_xlabel(f"SNR (dB); sigma 0 drawn at {inf_at:.0f}")
    ax.set_ylabel("success")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Referential game, n={int(frame['channel_uses'].iloc[0])} channel uses, C={C}")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "success_vs_snr.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5))
    fin = table[np.isfinite(table["capacity_bits"])]
    for (protocol, receiver), g in fin.groupby(["protocol", "receiver"], sort=False):
        ax.plot(g["capacity_bits"], g["delivered_bits"], styles.get(receiver, "-"), marker="o", ms=3,
                color=colors.get(protocol), label=f"{protocol} / {receiver}")
    if len(fin):
        lo, hi = float(fin["capacity_bits"].min()), float(fin["capacity_bits"].max())
        grid = np.geomspace(min(lo, 0.1), hi, 200)
        ax.plot(grid, grid, color="gray", lw=0.8, ls=":", label="capacity (y = x)")
        ax.set_xscale("log")
    ax.axhline(math.log2(C), color="black", lw=0.8, ls="-.", label=f"log2 C = {math.log2(C):.1f} (the most a game carries)")
    ax.set_ylim(0, 1.15 * math.log2(C))
    ax.set_xlabel("capacity bits per message, n/2 log2(1 + SNR)")
    ax.set_ylabel("delivered bits (Fano lower bound)")
    ax.set_title("Delivered vs capacity bits per message")
    ax.legend(fontsize=7, loc="center left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "delivered_vs_capacity.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    result = main(parse_config(Config, prog="python -m experiments.referential_game",
                               description=__doc__.split("\n\n")[0]))
    sys.exit(0 if result.rows == result.total else 1)
