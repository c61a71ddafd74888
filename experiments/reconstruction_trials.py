"""One trial of the reconstruction sweep (``experiments.reconstruction``): play a grid point's passages through
the agents and make its row (``COLUMNS``); for separation, first the oracle's rate pick on channel state only.

- ``play_trial(spec, speaker, listener, passages, settings)``: the row of one grid point;
- ``pick_rate(spec, speaker, listener, settings)``: the agent key the oracle picks for the trial's channel state
  (validation passages and noise of the state, never the trial's; cached), or the trial's own lm-jscc adapter;
- ``_play``: ``episodes`` passages through one agent key (also the oracle's and ``bench/official_cost.py``'s).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

import environments
from agents import SpeakerPolicy, call
from calm.tokenizer import cached_tokenizer
from experiments.common.links import PRIOR_PROTOCOLS, game_seed
from experiments.common.rate_oracle import ORACLE_SALT, cached_pick, oracle_key, oracle_seed
from experiments.common.sweep import make_channel
from experiments.common.tables import mean_interval, passage_metrics
from protocols.metrics import snr_db
from protocols.separation import separation_bound_accuracy

__all__ = ["COLUMNS", "METRICS", "pick_rate", "play_trial"]

METRICS = ("token_accuracy", "chunk_exact", "passage_exact", "chrf")
COLUMNS = [
    "protocol", "channel", "sigma", "snr_db", "rho", "channel_uses", "passage_length", "bits_sent", "capacity_bits",
    "bound_accuracy", *[f"{m}{s}" for m in METRICS for s in ("", "_ci_low", "_ci_high")], "mcs", "mcs_val_accuracy",
    "example",
    "example_target", "episodes", "seed", "checkpoint",
]


# ---------------------------------------------------------------------------------------------------------
# one trial


def _play(key: str | None, spec: dict, speaker, listener, passages: np.ndarray, channel, settings: dict, *,
          episodes: int, text: bool = True, seed: int | None = None, in_order: bool = False,
          bound: bool = False) -> dict:
    """``episodes`` passages of the trial sent with agent protocol ``key`` (None: nothing can be sent, the
    listener guesses the source model's most likely token): per-passage metrics and the first decode.
    ``text=False`` (the oracle's validation plays, which only compare token accuracy): no detokenising, no chrF.
    ``seed``: the env steps' seeds are ``game_seed(seed, step)`` (default the trial's ``spec["seed"]``);
    ``in_order``: the passages are played in order, each once (else drawn by the env). ``bound`` (the oracle's
    fast rule on a separation entry): frames with bit errors count as the fill-only guess (``decode_bound``)."""
    n, B = spec["channel_uses"], min(settings["batch_size"], episodes)
    seed = spec["seed"] if seed is None else seed
    env = environments.make("reconstruction_v0", passages=passages, channel_uses=n, batch_size=B, channel=channel,
                            vocab_size=settings["vocab_size"])
    speak = SpeakerPolicy(speaker, key, channel=channel) if key else None  # SNR-adaptive protocols are told it
    tok = cached_tokenizer(settings["tokenizer_path"]) if text else None
    parts, first = [], None
    for step in range(episodes // B):
        order = {"targets": np.arange(step * B, (step + 1) * B) % len(env.passages)} if in_order else None
        obs, _ = env.reset(seed=game_seed(seed, step), options=order)
        target = obs["speaker"]  # (B, L)
        if key is None:
            decoded = np.full_like(target, settings["guess"])
        else:
            obs, *_ = env.step({"speaker": speak.act(target)})
            heard = obs["listener"]
            if bound:  # the rate oracle's fast rule: the listener is shown what was sent
                decoded = call(listener, "decode_bound", key, heard["received"], channel, heard["gain"], target)
            elif PRIOR_PROTOCOLS.get(spec["protocol"]) == "token":  # the digital link's LM-prior listener
                decoded = call(listener, "decode_token_prior", key, heard["received"], channel, heard["gain"],
                               settings["prior_weight"], settings["token_prior_beam"])
            elif spec["protocol"] in PRIOR_PROTOCOLS:  # the CALM-prior listener, its sampling noise seeded per step
                decoded = call(listener, "decode_prior", key, heard["received"], channel, heard["gain"],
                               settings["prior_samples"], settings["prior_weight"],
                               PRIOR_PROTOCOLS[spec["protocol"]], game_seed(seed, step))
            else:
                decoded = call(listener, "decode", key, heard["received"], channel, heard["gain"])
            decoded = np.asarray(decoded, dtype=np.int64)
        texts = (tok.batch_decode(decoded.tolist()), tok.batch_decode(target.tolist())) if text else None
        parts.append(passage_metrics(decoded, target, settings["K"], texts))
        first = (texts[0][0], texts[1][0]) if first is None and text else first
    metrics = {m: np.concatenate([p[m] for p in parts]) for m in parts[0]}
    return {"metrics": metrics, "example": first, "key": key}


def pick_rate(spec: dict[str, Any], speaker: Any, listener: Any, settings: dict[str, Any]) -> tuple[str | None, float]:
    """The oracle's rate adaptation on channel state only: ``(key, validation accuracy)``. Every agent key of the
    menu (``settings["variants"]``) plays the validation passages ``settings["oracle_passages"]`` in order, each
    once, with noise seeded from the channel state's ``oracle_key``; the best token accuracy is picked (the first
    in menu order on ties). The trial's passages and seed play no part. The pick is cached in
    ``settings["oracle_dir"]`` (None: not cached). A menu of one key (or none) is no choice: nan accuracy.
    separation-lm with ``settings["lm_oracle_rule"]`` fill: a wrong frame scores as the fill-only guess (``bound``)."""
    n = spec["channel_uses"]
    keys = settings["variants"][f"{spec['protocol']}@{n}"] or [None]
    if spec["protocol"] == "lm-jscc":  # one adapter per channel family: the trial's own, no choice
        return f"lm-jscc-{spec['channel']}@{n}", math.nan
    if len(keys) == 1:
        return keys[0], math.nan
    state = oracle_key(spec["protocol"], spec["channel"], spec["sigma"], n, settings)
    val = settings["oracle_passages"]
    plays = (len(val) // min(settings["batch_size"], len(val))) * min(settings["batch_size"], len(val))
    channel = make_channel(spec["channel"], spec["sigma"], erasure_p=settings["erasure_p"],
                           fading_block=settings["fading_block"], ofdm_speed=settings.get("ofdm_speed", 0.0),
                           ofdm_interpolation=settings.get("ofdm_interpolation", "nn"))
    seed = int(np.random.SeedSequence([oracle_seed(state), ORACLE_SALT]).generate_state(1)[0])
    bound = spec["protocol"] == "separation-lm" and settings.get("lm_oracle_rule", "fill") == "fill"

    def score(k):
        return float(_play(k, spec, speaker, listener, val, channel, settings, episodes=plays, text=False,
                           seed=seed, in_order=True, bound=bound)["metrics"]["token_accuracy"].mean())

    where = settings.get("oracle_dir")
    pick, scores = cached_pick(None if where is None else Path(where) / f"{state}.json", keys, score)
    return pick, float(scores[str(pick)])


def play_trial(spec: dict[str, Any], speaker: Any, listener: Any, passages: np.ndarray, settings: dict[str, Any]) -> dict:
    """One grid point: the row (``COLUMNS``). For separation the MCS is the oracle's pick for the channel state
    (``pick_rate``: validation passages, never these), then it plays the trial's passages."""
    n, L = spec["channel_uses"], settings["passage_length"]
    channel = make_channel(spec["channel"], spec["sigma"], erasure_p=settings["erasure_p"],
                           fading_block=settings["fading_block"], ofdm_speed=settings.get("ofdm_speed", 0.0),
                           ofdm_interpolation=settings.get("ofdm_interpolation", "nn"))
    key, val_accuracy = pick_rate(spec, speaker, listener, settings)
    best = _play(key, spec, speaker, listener, passages, channel, settings, episodes=settings["episodes"])
    capacity = n * channel.capacity_per_use()
    bits = settings["bits_sent"].get(best["key"], 0)
    row = {"protocol": spec["protocol"], "channel": spec["channel"], "sigma": spec["sigma"],
           "snr_db": snr_db(spec["sigma"]) + 0.0, "rho": spec["rho"], "channel_uses": n, "passage_length": L,
           "bits_sent": float("nan") if bits is None else float(bits), "capacity_bits": capacity,
           "bound_accuracy": float(separation_bound_accuracy(capacity, settings["entropy_bits_per_token"], L,
                                                             settings["fill_accuracy"])),
           "mcs": best["key"].split("#", 1)[1] if best["key"] and "#" in best["key"] else
           ("none fits: the listener guesses" if best["key"] is None else None), "mcs_val_accuracy": val_accuracy,
           "example": best["example"][0],
           "example_target": best["example"][1],
           "episodes": settings["episodes"], "seed": spec["seed"], "checkpoint": settings["checkpoint"]}
    for m in METRICS:
        row[m], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = mean_interval(best["metrics"][m])
    return {k: row[k] for k in COLUMNS}


def _trial(spec: dict[str, Any], *, pairs: list, passages: np.ndarray, settings: dict[str, Any]) -> dict:
    speaker, listener = pairs[spec["index"] % len(pairs)]
    return play_trial(spec, speaker, listener, passages, settings)
