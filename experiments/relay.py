"""Relay chains: a passage crosses H hops, each its own noisy channel, with a relay agent between hops.

    python -m experiments.relay                                 # default sweep, local Ray
    python -m experiments.relay --hops 1 2 4 --snrs-db 0 10 --episodes 64
    python -m experiments.relay --help
    ray submit cluster.yaml experiments/relay.py -- --snrs-db 0 5 10

``speaker -> hop 0 -> relay0 -> hop 1 -> ... -> relay{H-2} -> hop H-1 -> listener`` (``relay_v0``, every hop an
AWGN channel at the same SNR, n = ``channel_uses`` symbols per hop). One trial = one (mode, H, SNR, seed):
``episodes`` passages of L tokens; every mode sees the same passages and the same noise on hop h (the env resets
with ``game_seed(seed, step)``). Relay modes:

- ``forward`` (analog amplify-and-forward): the vector protocol (CALM latent means, PCA to n, sent analog); the
  env re-sends what each relay heard with the fixed gain g = 1/sqrt(1 + sigma^2) (relays act on no model), and
  the listener, told the known forward gains and the chain's end-to-end noise, decodes at the end. The noise
  adds up: the end-to-end SNR is 1 / ((1 + sigma^2)^H - 1).
- ``regenerate`` (digital decode-and-forward): the separation baseline (bigram range coding -> 5G LDPC/Polar ->
  QAM); each relay agent decodes the bits to token ids and re-encodes them with the same MCS. **Oracle rate
  adaptation** over the whole chain: every MCS of the bank plays ``pilot_passages`` of the trial (the same
  passages and noise for each) through all H hops, the best one plays the trial (the ``mcs`` column). The oracle
  prunes (``oracle_pruning``, branch and bound): the MCS go in order of their one-hop accuracy, and one whose
  accuracy after some hop is already below the best complete chain's is dropped. A token lost at a relay is
  re-encoded wrong, so accuracy does not grow along a chain but by chance: where it never grows the pick is the
  exhaustive one's (a test checks the search); near the chance floor a dropped MCS can win back a token or two by
  chance, so there the pick may differ between MCS of about the same accuracy. With the default autoencoder
  (n = 128, 41 MCS) both picks agreed at 0 and 10 dB for H = 2 and 8, the pruned search taking 18-26 s per trial
  on two cores instead of 30-150 s; ``--no-oracle-pruning`` plays every MCS through every hop.
- ``reencode`` (CALM decode-and-forward): the vector protocol; each relay agent decodes the received latents
  to tokens with its own CALM autoencoder and re-encodes them (``CALMAgentCore.relay``).

Every relay is an agent actor (``experiments.common.trials.agent_pool``: ``speaker``, ``relay0`` .. ``relay{max H-2}``,
``listener``), all loading the same autoencoder and protocols: a homogeneous chain. A heterogeneous chain (relays
with other autoencoders) would need latent alignment (``protocols/alignment.py``) between neighbours and is not
built here. AWGN only: fading or erasures per hop are not part of this sweep.

Rows carry token accuracy and chrF (sacrebleu, detokenised text) with 95% intervals, the MCS and bits sent (the
digital link). ``summary.md`` tabulates token accuracy vs H per (SNR, mode) and states, per SNR, the hop count at
which analog forward first falls below digital regenerate (or that it never does up to the largest H);
``accuracy_vs_hops.png`` plots it, one panel per SNR.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np

import environments
from agents import call
from calm.tokenizer import cached_tokenizer
from experiments.common.config import unhashed
from experiments.common.links import fit_protocols, game_seed
from experiments.common.multiagent import LinkConfig, metric_columns, sigma_of_snr, trial_metrics
from experiments.common.sweep import Plan, Run, Study, SweepResult, cli, make_channel, run_sweep
from experiments.relay_report import console_summary, write_report

__all__ = ["COLUMNS", "MODES", "STUDY", "Config", "chain_members", "main", "oracle", "play_trial", "trial_grid"]

ModeName = Literal["forward", "regenerate", "reencode"]
MODES = ("forward", "regenerate", "reencode")
#: the protocol each mode sends and the relay_v0 env mode it plays
PROTOCOL = {"forward": "vector", "regenerate": "separation", "reencode": "vector"}
ENV_MODE = {"forward": "forward", "regenerate": "reencode", "reencode": "reencode"}
COLUMNS = ["mode", "protocol", "hops", "snr_db", "sigma", "channel_uses", "passage_length", *metric_columns(), "mcs",
           "bits_sent", "example", "example_target", "episodes", "seed", "checkpoint"]


@dataclass
class Config(LinkConfig):
    """The relay sweep. Grid axes: modes x hops x snrs_db x seeds."""

    modes: tuple[ModeName, ...] = unhashed(MODES)
    """forward (analog amplify-and-forward of the vector protocol), regenerate (separation, each relay decodes the
    bits and re-encodes them), reencode (vector protocol, each relay decodes to tokens with its CALM autoencoder
    and re-encodes)"""
    hops: tuple[int, ...] = unhashed((1, 2, 3, 4, 5, 6, 7, 8))
    """hop counts H (H - 1 relay agents; H = 1 is the plain link)"""
    snrs_db: tuple[float, ...] = unhashed((0.0, 10.0))
    """SNR of every hop in dB (AWGN, sigma = 10^(-SNR/20); inf: noise-free)"""
    oracle_pruning: bool = True
    """regenerate: the MCS oracle drops an MCS once its pilot accuracy after some hop is below the best complete
    chain's (accuracy does not grow along a chain but by chance); --no-oracle-pruning plays every MCS of the bank
    through every hop"""

    ALLOW_INF: ClassVar[tuple[str, ...]] = ("snrs_db",)  # inf dB: a noiseless chain

    def __post_init__(self) -> None:
        super().__post_init__()
        bad = [m for m in self.modes if m not in MODES]
        if bad or not self.modes:
            raise ValueError(f"modes must be a non-empty subset of {MODES}, got {self.modes}")
        if not self.hops or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hops):
            raise ValueError(f"hops must be integers >= 1, got {self.hops}")
        if not self.snrs_db or any(math.isnan(s) or s == -math.inf for s in self.snrs_db):
            raise ValueError(f"snrs_db must be numbers (inf allowed, not -inf or nan), got {self.snrs_db}")


def trial_grid(cfg: Config) -> list[dict[str, Any]]:
    """Every (mode, H, SNR, seed) in a fixed order, each with a unique file-name-safe ``key``."""
    grid = [{"mode": m, "hops": int(h), "snr_db": float(s), "seed": int(seed)}
            for m in dict.fromkeys(cfg.modes) for h in dict.fromkeys(cfg.hops) for s in dict.fromkeys(cfg.snrs_db)
            for seed in dict.fromkeys(cfg.seeds)]
    for spec in grid:
        spec["key"] = f"{spec['mode']}-h{spec['hops']}-snr{spec['snr_db']!r}-seed{spec['seed']}"
    return grid


def chain_members(checkpoint, dirs: dict[str, str], max_hops: int) -> dict[str, tuple[str, dict[str, str]]]:
    """The agent pool of a homogeneous chain: ``speaker``, ``relay0`` .. ``relay{max_hops-2}``, ``listener``."""
    names = ["speaker", *[f"relay{h}" for h in range(max_hops - 1)], "listener"]
    return {name: (str(checkpoint), dict(dirs)) for name in names}


# ---------------------------------------------------------------------------------------------------------
# one trial


def _forward_receiver(env, sigma: float):
    """What the listener of an amplify-and-forward chain is told: the product G of the known forward gains (it
    multiplies the observed fading gain) and the AWGN model of the end-to-end noise, sum over hops j of
    sigma^2 times the squared gains applied after hop j."""
    gains = np.asarray(env.forward_gains["listener"], dtype=np.float64)  # (H - 1,)
    after = [float(np.prod(gains[j:])) for j in range(len(gains) + 1)]  # gain applied to hop j's noise
    return float(np.prod(gains)), make_channel("awgn", sigma * math.sqrt(sum(a * a for a in after)))


def _chain(mode: str, key: str | None, spec: dict, pool: dict, passages: np.ndarray, channel, settings: dict, *,
           episodes: int, text: bool = True) -> dict:
    """``episodes`` passages through the H-hop chain with agent protocol ``key`` (None: nothing fits, the listener
    guesses): the row's metric columns and the first passage decoded. ``text=False`` (pilot plays): no chrF."""
    H, n = spec["hops"], settings["channel_uses"]
    B = min(settings["batch_size"], episodes)
    env = environments.make("relay_v0", passages=passages, hops=H, channel_uses=n, channel=channel,
                            mode=ENV_MODE[mode], batch_size=B, task="reconstruct", vocab_size=settings["vocab_size"])
    gain_g, end_channel = _forward_receiver(env, channel.sigma) if mode == "forward" else (1.0, channel)
    decoded, targets = [], []
    for step in range(episodes // B):
        obs, _ = env.reset(seed=game_seed(spec["seed"], step))
        target = obs["speaker"]  # (B, L)
        if key is None:
            obs, *_ = env.step({"speaker": np.zeros((B, n), np.float32)})
            for relay in env.relays:  # nothing to say: the relays stay silent
                obs, *_ = env.step({relay: np.zeros((B, n), np.float32)})
            ids = np.full_like(target, settings["guess"])
        else:
            sent = call(pool["speaker"], "encode", key, target)
            obs, *_ = env.step({"speaker": np.asarray(sent, np.float32)})
            for h, relay in enumerate(env.relays):  # reencode: relay_h hears hop h, sends on hop h+1
                heard = obs[relay]
                sent = call(pool[f"relay{h}"], "relay", key, heard["received"], channel, heard["gain"])
                obs, *_ = env.step({relay: np.asarray(sent, np.float32)})
            heard = obs["listener"]
            ids = np.asarray(call(pool["listener"], "decode", key, heard["received"], end_channel,
                                  heard["gain"] * np.float32(gain_g)), dtype=np.int64)
        env.step({"listener": ids})  # the env scores the listener's ids and ends the round
        decoded.append(ids)
        targets.append(target)
    tok = cached_tokenizer(settings["tokenizer_path"]) if text else None
    metrics = trial_metrics(decoded, targets, settings["K"], tok)
    example = (tok.decode(decoded[0][0].tolist()), tok.decode(targets[0][0].tolist())) if text else (None, None)
    return {"metrics": metrics, "example": example, "key": key}


def oracle(keys: list[str], spec: dict, pool: dict, passages: np.ndarray, channel, settings: dict, *,
           prune: bool | None = None) -> tuple[str, dict[str, float]]:
    """The digital chain's oracle rate adaptation: the key of ``keys`` (an MCS bank) whose ``pilot`` passages (one
    batch, seeded ``game_seed(seed, 0)``: the same passages and noise for every key) arrive with the highest token
    accuracy through all H hops, the first in bank order on ties; and the pilot accuracy of every key (after the
    hop where a pruned key was dropped). The relays decode then re-encode (their ``relay``, in two calls, so that
    the accuracy after every hop is seen). ``prune`` (default ``settings["prune"]``): branch and bound, see the
    module docstring."""
    prune = settings.get("prune", True) if prune is None else prune
    H, n, B = spec["hops"], settings["channel_uses"], min(settings["pilot"], settings["episodes"])
    chains = []
    for key in keys:  # every key's hop 0 and the first receiver's decode
        env = environments.make("relay_v0", passages=passages, hops=H, channel_uses=n, channel=channel,
                                mode="reencode", batch_size=B, task="reconstruct", vocab_size=settings["vocab_size"])
        obs, _ = env.reset(seed=game_seed(spec["seed"], 0))
        target = obs["speaker"]
        obs, *_ = env.step({"speaker": np.asarray(call(pool["speaker"], "encode", key, target), np.float32)})
        chains.append({"key": key, "env": env, "obs": obs, "target": target, "hop": 0})
        _hear(chains[-1], pool, channel)
    scores, best = {}, None

    def beaten(chain: dict) -> bool:  # below the best complete chain already: it cannot win (but by chance)
        return prune and best is not None and chain["accuracy"] < scores[best]

    for chain in sorted(chains, key=lambda c: -c["accuracy"]):  # stable: bank order among equals
        while chain["hop"] < H - 1 and not beaten(chain):
            h = chain["hop"]
            sent = call(pool[f"relay{h}"], "encode", chain["key"], chain["ids"])
            chain["obs"], *_ = chain["env"].step({f"relay_{h}": np.asarray(sent, np.float32)})
            chain["hop"] += 1
            _hear(chain, pool, channel)
        scores[chain["key"]] = chain["accuracy"]
        if chain["hop"] == H - 1 and (best is None or chain["accuracy"] > scores[best] or (
                chain["accuracy"] == scores[best] and keys.index(chain["key"]) < keys.index(best))):
            best = chain["key"]
    return best, scores


def _hear(chain: dict, pool: dict, channel) -> None:
    """The receiver after hop ``chain["hop"]`` (a relay, or the listener after the last hop) decodes: its ids and
    their token accuracy."""
    env, h = chain["env"], chain["hop"]
    agent, name = (pool["listener"], "listener") if h == env.hops - 1 else (pool[f"relay{h}"], f"relay_{h}")
    heard = chain["obs"][name]
    chain["ids"] = np.asarray(call(agent, "decode", chain["key"], heard["received"], channel, heard["gain"]),
                              dtype=np.int64)
    chain["accuracy"] = float((chain["ids"] == chain["target"]).mean())


def play_trial(spec: dict[str, Any], pool: dict[str, Any], passages: np.ndarray, settings: dict[str, Any]) -> dict:
    """One grid point: the row (``COLUMNS``). ``pool``: ``speaker``, ``relay0``.., ``listener`` (actors or
    ``CALMAgentCore``s). Regenerate: the MCS of the bank with the best pilot accuracy through the whole chain plays
    the trial (``oracle``: rate adaptation)."""
    mode, n = spec["mode"], settings["channel_uses"]
    sigma = sigma_of_snr(spec["snr_db"])
    channel = make_channel("awgn", sigma)
    keys = settings["variants"][f"{PROTOCOL[mode]}@{n}"] or [None]
    key = keys[0] if len(keys) == 1 else oracle(keys, spec, pool, passages, channel, settings)[0]
    best = _chain(mode, key, spec, pool, passages, channel, settings, episodes=settings["episodes"])
    bits = settings["bits_sent"].get(key) if key else 0
    row = {"mode": mode, "protocol": PROTOCOL[mode], "hops": spec["hops"], "snr_db": float(spec["snr_db"]),
           "sigma": sigma, "channel_uses": n, "passage_length": settings["passage_length"], **best["metrics"],
           "mcs": key.split("#", 1)[1] if key and "#" in key else ("none fits: the listener guesses" if key is None
                                                                  else None),
           "bits_sent": float("nan") if bits is None else float(bits), "example": best["example"][0],
           "example_target": best["example"][1], "episodes": settings["episodes"], "seed": spec["seed"],
           "checkpoint": settings["checkpoint"]}
    return {k: row[k] for k in COLUMNS}


def _trial(spec: dict[str, Any], *, pool: dict, passages: np.ndarray, settings: dict[str, Any]) -> dict:
    return play_trial(spec, pool, passages, settings)


# ---------------------------------------------------------------------------------------------------------
# main


def prepare(cfg: Config, run: Run) -> Plan:
    """Fit the protocols the modes send; one agent per role of the longest chain serves every trial."""
    protocols = sorted({PROTOCOL[m] for m in cfg.modes})
    dirs, variants, facts, skipped, passages = fit_protocols(cfg, run.checkpoint, run.dir / "protocols",
                                                             protocols=protocols, budgets=[cfg.channel_uses])
    if skipped:
        raise ValueError("cannot build " + "; ".join(f"{p}@{n}: {why}" for (p, n), why in skipped.items()))
    members = chain_members(run.checkpoint, dirs, max(cfg.hops))
    settings = {"episodes": cfg.episodes, "batch_size": cfg.batch_size, "passage_length": cfg.passage_length,
                "channel_uses": cfg.channel_uses, "vocab_size": facts["vocab_size"], "K": facts["K"],
                "variants": variants, "bits_sent": facts["bits_sent"], "guess": facts["guess"],
                "pilot": cfg.pilot_passages, "prune": cfg.oracle_pruning, "checkpoint": run.checkpoint_id,
                "tokenizer_path": str(run.checkpoint / "tokenizer.json")}
    return Plan(grid=trial_grid(cfg), trial=_trial, shared={"passages": passages, "settings": settings}, pool=members,
                record={"facts": {k: v for k, v in facts.items() if k != "bits_sent"}, "variants": variants,
                        "agents": list(members)},
                describe=f"{len(cfg.modes)} modes x H in {list(cfg.hops)} x SNR in {list(cfg.snrs_db)} dB x "
                         f"{len(cfg.seeds)} seeds; {cfg.episodes} passages of L={cfg.passage_length} in "
                         f"n={cfg.channel_uses} channel uses per hop; {len(members)} agents")


def report(cfg: Config, frame, run: Run, plan: Plan) -> None:
    """summary.md, the plot and the console table of the finished rows."""
    write_report(frame, run.dir, plots=cfg.plots)
    print(console_summary(frame), flush=True)


STUDY = Study(prefix="relay", columns=COLUMNS, prepare=prepare, report=report)


def main(cfg: Config) -> SweepResult:
    """Run (or resume) the sweep and write the run directory; prints the summary table."""
    return run_sweep(cfg, STUDY)


if __name__ == "__main__":
    sys.exit(cli(main, Config, prog="python -m experiments.relay", description=__doc__.split("\n\n")[0]))
