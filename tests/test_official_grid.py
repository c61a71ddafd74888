"""Every multi-agent experiment runs end to end on a released CALM autoencoder (the official code's layout,
converted by ``calm.convert``): the referential game, reconstruction, alignment, relay and broadcast, each on
the smallest grid with the vector protocol and a token protocol, on a ``text:`` corpus its tokenizer encodes.

The model is the tiny fixture of ``tests/conftest.py``'s ``official_checkpoints`` (vocabulary 303 with pad id
302 and eos 301, a BOS post-processor, K = 4, l = 16): a randomly initialised model, so its vector decodes
almost nothing; the assertions check that the run is made of *its* weights and tokenizer (checkpoint ids,
V-sized token codes, vector messages recomputed from the released files) and what holds for any weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.ray

# one trial at a time (a second Tune worker costs a process start, which is most of a tiny run on 2 cores); a
# short training of the alignment's seed listener (a fresh one of the released architecture)
FAST = dict(plots=False, max_concurrent=1, ae_steps=20, ae_batch_size=32, ae_time_limit=0.0)
V, K, ELL, PAD, EOS = 303, 4, 16, 302, 301
FIXTURE = Path(__file__).parent / "fixtures" / "official_calm"  # the released-layout files conftest converts
TOKEN_BITS = math.ceil(math.log2(V))  # 9 bits per id of this vocabulary (17 for the released 128257)


@pytest.fixture(scope="module")
def released(official_checkpoints, tmp_path_factory):
    """The converted autoencoder, the corpus, the checkpoint id every row must carry, and the config fields
    every run shares."""
    from experiments.common.models import checkpoint_id

    ae = official_checkpoints["autoencoder"]
    root = tmp_path_factory.mktemp("official-grid")
    common = dict(checkpoint=str(ae), corpus=official_checkpoints["corpus"], results_dir=str(root / "results"),
                  runs_dir=str(root / "runs"), **FAST)
    return {"ae": ae, "id": checkpoint_id(ae), "common": common}


def _finite_in(frame: pd.DataFrame, columns: list[str], low: float, high: float) -> None:
    for c in columns:
        values = frame[c].to_numpy(dtype=float)
        assert np.isfinite(values).all() and ((values >= low) & (values <= high)).all(), (c, values)


def _intervals_hold(frame: pd.DataFrame, metric: str) -> None:
    assert ((frame[f"{metric}_ci_low"] <= frame[metric] + 1e-12)
            & (frame[metric] <= frame[f"{metric}_ci_high"] + 1e-12)).all(), frame[[metric, f"{metric}_ci_low"]]


def _done(result, trials: int, released: dict) -> pd.DataFrame:
    """results.csv of a run that played all its ``trials`` on the converted autoencoder (config.json says so)."""
    import json

    assert result.failed == [] and result.rows == result.total == trials, result
    record = json.loads((result.run_dir / "config.json").read_text())
    assert record["checkpoint"] == str(Path(released["ae"]).resolve()) and record["checkpoint_id"] == released["id"]
    return pd.read_csv(result.run_dir / "results.csv")


# ---------------------------------------------------------------------------------------------------------
# the referential game


@pytest.fixture(scope="module")
def referential(ray_session, released):
    from experiments.referential_game import Config, main

    cfg = Config(**released["common"], passage_length=8, channel_uses=(32,), candidates=8, sigmas=(0.0, 3.0),
                 seeds=(0,), protocols=("vector", "uncoded-tokens"), receivers=("hard",), episodes=64,
                 batch_size=64, num_passages=256, fit_passages=256, distractors="hard")
    return cfg, main(cfg)


def test_referential_game_plays_every_point_on_the_released_autoencoder(referential, released):
    import json

    cfg, result = referential
    frame = _done(result, 4, released)
    assert (frame.checkpoint == released["id"]).all()
    record = json.loads((result.run_dir / "config.json").read_text())
    assert record["autoencoder"] == {"K": K, "latent_dim": ELL, "vocab_size": V}
    _finite_in(frame, ["success", "success_ci_low", "success_ci_high"], 0.0, 1.0)
    _intervals_hold(frame, "success")
    assert (frame.delivered_bits <= math.log2(8) + 1e-9).all()
    success = frame.set_index(["protocol", "sigma"]).success
    # noiseless: distinct passages give distinct latents and distinct token prefixes; -9.5 dB hurts the vector
    assert success[("vector", 0.0)] == 1.0 and success[("uncoded-tokens", 0.0)] > 0.9
    assert success[("vector", 3.0)] < success[("vector", 0.0)]
    # the token code is the released vocabulary's: 9 bits per id, as many whole ids as 32 uses carry
    sent = frame.groupby("protocol").bits_sent.first()
    assert sent["uncoded-tokens"] == (32 // TOKEN_BITS) * TOKEN_BITS and np.isnan(sent["vector"])
    tokens = frame[frame.protocol == "uncoded-tokens"].set_index("sigma").token_accuracy
    assert (32 // TOKEN_BITS) / cfg.passage_length <= tokens[0.0] < 0.5  # the 3 ids sent, and few lucky fills


def test_the_vector_messages_are_the_released_weights(referential):
    """The run's fitted vector protocol, driven by the model read straight from the *released* files (not the
    converted ones), sends what a vector protocol fitted here on that model sends: the run's messages are the
    released autoencoder's latents."""
    from calm.checkpoint import load_pretrained
    from calm.official import load_released
    from experiments.common.links import game_passages
    from protocols import load_protocol, make_protocol

    cfg, result = referential
    model, _ = load_released(FIXTURE / "autoencoder", tokenizer=FIXTURE / "tokenizer")
    _, tok = load_pretrained(cfg.checkpoint, expect="autoencoder")
    assert (tok.pad_token_id, tok.eos_token_id, len(tok)) == (PAD, EOS, V)
    train, test = game_passages(cfg, tok)
    assert train.max() < V and test.max() < V and not (test == PAD).any()  # the tokenizer's ids, no padding
    saved = load_protocol(result.run_dir / "protocols" / "vector@32", autoencoder=model)
    fresh = make_protocol("vector", model, budget=32).fit(train)
    np.testing.assert_allclose(saved.encode(test[:32]), fresh.encode(test[:32]), rtol=1e-5, atol=1e-6)
    # another autoencoder of the same shape sends other messages through the same saved protocol
    import torch

    other = type(model)(model.config).eval()
    with torch.no_grad():
        for p, q in zip(other.parameters(), model.parameters()):
            p.copy_(q + 0.05 * torch.randn_like(q))
    assert not np.allclose(load_protocol(result.run_dir / "protocols" / "vector@32", autoencoder=other).encode(test[:32]),
                           saved.encode(test[:32]), atol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# reconstruction


def test_reconstruction_on_the_released_autoencoder(ray_session, released):
    """The vector and the uncoded token link (the separation link runs in the relay's regenerate mode: its
    Sionna import in every agent would double this run's time)."""
    from experiments.reconstruction import Config, main

    cfg = Config(**released["common"], passage_length=8, rhos=(2.0,), channels=("awgn",), sigmas=(0.0, 1.0),
                 seeds=(0,), protocols=("vector", "uncoded-tokens"), episodes=32, batch_size=32, num_passages=128,
                 fit_passages=256, pilot_passages=16)
    frame = _done(main(cfg), 4, released)
    assert (frame.checkpoint == released["id"]).all() and (frame.channel_uses == 16).all()
    for m in ("token_accuracy", "chunk_exact", "passage_exact"):
        _finite_in(frame, [m, f"{m}_ci_low", f"{m}_ci_high"], 0.0, 1.0)
        _intervals_hold(frame, m)
    _finite_in(frame, ["bound_accuracy"], 0.0, 1.0)
    rows = frame.set_index(["protocol", "sigma"])
    # 16 uses carry one 9-bit id of the released vocabulary; without noise it arrives, the rest is the best guess
    tokens = rows.loc[("uncoded-tokens", 0.0)]
    assert tokens.bits_sent == TOKEN_BITS and tokens.token_accuracy >= 1 / cfg.passage_length
    assert rows.loc[("uncoded-tokens", 1.0)].token_accuracy <= tokens.token_accuracy
    assert frame[frame.protocol == "vector"].bits_sent.isna().all()
    assert rows.loc[("vector", 0.0)].bound_accuracy == 1.0 and rows.loc[("vector", 1.0)].bound_accuracy < 1.0
    # the examples are text of the corpus, decoded with the released tokenizer (no BOS or pad in them)
    assert all("<|begin_of_text|>" not in t and "[PAD]" not in t for t in frame.example_target)


# ---------------------------------------------------------------------------------------------------------
# alignment


def test_alignment_on_the_released_autoencoder_with_a_listener_of_its_architecture(ray_session, released):
    """A seed listener trained here copies the released architecture and tokenizer (it differs only in its
    seed); the same-weights vector finds every target, the unaligned seed listener does not."""
    import dataclasses
    import json

    from calm.checkpoint import load_config
    from experiments.alignment import Config, main

    cfg = Config(**released["common"], pairings=("same", "seed"), passage_length=8, channel_uses=16,
                 anchors=(0, 64), methods=("ridge",), sigmas=(0.0,), episodes=32, batch_size=32, num_passages=128,
                 fit_passages=128, pilot_passages=16, num_candidates=4, token_protocols=("uncoded-tokens",))
    result = main(cfg)
    frame = _done(result, 5, released)
    assert (frame.speaker == released["id"]).all()
    record = json.loads((result.run_dir / "config.json").read_text())
    listener = record["members"]["listener-seed"]
    assert listener != str(released["ae"]) and (frame[frame.pairing == "seed"].listener != released["id"]).all()
    mine, theirs = load_config(released["ae"])["config"], load_config(listener)["config"]
    for field in ("K", "latent_dim", "hidden_size", "intermediate_size", "num_layers", "vocab_size", "pad_id",
                  "linear_bias"):
        assert mine[field] == theirs[field], field
    assert load_config(listener)["tokenizer_fingerprint"] == load_config(released["ae"])["tokenizer_fingerprint"]
    _finite_in(frame, ["success", "token_accuracy", "chrf"], 0.0, 100.0)
    _finite_in(frame, ["success", "token_accuracy"], 0.0, 1.0)
    _intervals_hold(frame, "success")
    rows = frame.set_index(["protocol", "pairing", "method", "anchors"])
    assert rows.loc[("vector", "same", "none", 0)].success == 1.0
    assert rows.loc[("vector", "seed", "none", 0)].success < 1.0
    # the token link decodes the same ids for either listener (one tokenizer: nothing re-tokenised)
    assert rows.loc[("uncoded-tokens", "same", "-", 0)].token_accuracy == rows.loc[
        ("uncoded-tokens", "seed", "-", 0)].token_accuracy
    assert np.isfinite(rows.loc[("vector", "seed", "ridge", 64)].anchor_mse)
    # a latent listener of the speaker's own l (the default other_latent_dim, 16, is the fixture's) is no pairing
    with pytest.raises(ValueError, match="other-latent-dim"):
        main(dataclasses.replace(cfg, pairings=("same", "latent"), run_name="latent-refused"))


# ---------------------------------------------------------------------------------------------------------
# relay


def test_relay_on_the_released_autoencoder(ray_session, released):
    from experiments.relay import Config, main

    cfg = Config(**released["common"], hops=(1, 2), snrs_db=(math.inf, 0.0), passage_length=8, channel_uses=16,
                 episodes=16, batch_size=16, pilot_passages=8, num_passages=128, fit_passages=256,
                 separation_codes=("polar",))
    frame = _done(main(cfg), 12, released)
    assert (frame.checkpoint == released["id"]).all()
    _finite_in(frame, ["token_accuracy", "token_accuracy_ci_low", "token_accuracy_ci_high"], 0.0, 1.0)
    _finite_in(frame, ["chrf"], 0.0, 100.0)
    _intervals_hold(frame, "token_accuracy")
    acc = frame.set_index(["mode", "hops", "snr_db"]).token_accuracy
    # a noiseless forwarding relay changes nothing: two hops deliver what one does; at one hop every vector
    # mode is the same link
    assert acc[("forward", 2, math.inf)] == acc[("forward", 1, math.inf)]
    assert acc[("forward", 1, 0.0)] == acc[("reencode", 1, 0.0)]
    regen = frame[frame["mode"] == "regenerate"]
    assert (regen.protocol == "separation").all() and regen.mcs.notna().all()
    # the digital link delivers most of the released tokenizer's ids, and a noiseless regenerating relay loses none
    assert acc[("regenerate", 1, math.inf)] > 0.5 and acc[("regenerate", 2, math.inf)] == acc[("regenerate", 1, math.inf)]


# ---------------------------------------------------------------------------------------------------------
# broadcast


def test_broadcast_on_the_released_autoencoder(ray_session, released):
    from experiments.broadcast import Config, main

    cfg = Config(**released["common"], listener_snrs_db=(-20.0, 40.0), protocols=("vector", "uncoded-tokens"),
                 passage_length=8, channel_uses=16, episodes=32, batch_size=32, pilot_passages=16,
                 num_passages=128, fit_passages=256)
    frame = _done(main(cfg), 2, released)
    assert len(frame) == 2 * 2 and (frame.checkpoint == released["id"]).all()  # one line per listener
    _finite_in(frame, ["token_accuracy", "token_accuracy_ci_low", "token_accuracy_ci_high"], 0.0, 1.0)
    _intervals_hold(frame, "token_accuracy")
    tokens = frame[frame.protocol == "uncoded-tokens"].set_index("snr_db")
    assert (tokens.bits_sent == TOKEN_BITS).all()  # one 9-bit id of the released vocabulary in 16 uses
    assert tokens.token_accuracy[40.0] > tokens.token_accuracy[-20.0]


def test_a_hub_corpus_offline_is_a_one_line_error(released, monkeypatch, capsys):
    """``--corpus wikitext103`` with the hub switched off stops before any trial with one line that says to
    pass a local copy (``text:<path>``), exit status 2, as a bad flag would."""
    import sys

    from experiments.common.sweep import cli
    from experiments.relay import Config, main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", ["relay", "--checkpoint", str(released["ae"]), "--corpus", "wikitext103",
                                      "--results-dir", released["common"]["results_dir"], "--no-plots"])
    assert cli(main, Config, prog="relay", description="") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wikitext103" in err[0] and "text:<path>" in err[0], err
