"""experiments.relay: the grid and CLI, seeded trials of every mode (deterministic, noise-free forward = one hop),
the crossing report on known rows, and a tiny sweep on Ray that resumes without losing or doubling rows."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pandas as pd
import pytest

from experiments.relay import COLUMNS, MODES, Config, chain_members, main, play_trial, trial_grid
from experiments.relay_report import crossing_lines, end_to_end_snr_db, first_below, pooled

pytestmark = pytest.mark.ray

SMALL = dict(passage_length=8, channel_uses=16, episodes=16, batch_size=16, pilot_passages=8, num_passages=128,
             fit_passages=256, separation_codes=("polar",), plots=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised tiny K = 4 autoencoder (bpe:2048) and its vector and separation protocols at n = 16."""
    import torch

    from calm.autoencoder import Autoencoder, preset
    from calm.checkpoint import save_pretrained
    from calm.tokenizer import get_tokenizer
    from experiments.common.links import fit_protocols

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-relay")
    tok = get_tokenizer("bpe:2048")
    ae = Autoencoder(preset("tiny", vocab_size=len(tok), hidden_size=32, intermediate_size=64, latent_dim=8))
    save_pretrained(ae, root / "ae", tok)
    cfg = Config(checkpoint=str(root / "ae"), results_dir=str(root / "results"), **SMALL)
    dirs, variants, facts, skipped, passages = fit_protocols(cfg, root / "ae", root / "protocols",
                                                             protocols=("vector", "separation"), budgets=[16])
    assert not skipped and len(variants["separation@16"]) > 1  # a menu for the oracle to pick from
    settings = {"episodes": 16, "batch_size": 16, "passage_length": 8, "channel_uses": 16,
                "vocab_size": facts["vocab_size"], "K": facts["K"], "variants": variants,
                "bits_sent": facts["bits_sent"], "guess": facts["guess"], "pilot": 8, "checkpoint": "tiny",
                "tokenizer_path": str(root / "ae" / "tokenizer.json")}
    return cfg, dirs, settings, passages


def _pool(cfg, dirs, hops: int) -> dict:
    """A fresh in-process chain: one agent per role (all the same weights, as the sweep's actors)."""
    from agents import CALMAgentCore

    return {name: CALMAgentCore(ckpt, protos, name=name) for name, (ckpt, protos) in
            chain_members(cfg.checkpoint, dirs, hops).items()}


def test_grid_config_and_help(capsys):
    from calm.cli import parse_config

    grid = trial_grid(Config())
    assert len(grid) == 3 * 8 * 2 * 1 and len({s["key"] for s in grid}) == len(grid)
    assert {s["mode"] for s in grid} == set(MODES) and {s["snr_db"] for s in grid} == {0.0, 10.0}
    assert list(chain_members("ae", {}, 4)) == ["speaker", "relay0", "relay1", "relay2", "listener"]
    with pytest.raises(SystemExit) as exc:
        parse_config(Config, ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in out
    cfg = parse_config(Config, ["--modes", "forward", "regenerate", "--hops", "1", "3", "--snrs-db", "0", "inf"])
    assert cfg.modes == ("forward", "regenerate") and cfg.hops == (1, 3) and cfg.snrs_db == (0.0, math.inf)
    for bad in (dict(modes=("teleport",)), dict(hops=(0,)), dict(hops=()), dict(snrs_db=(math.nan,))):
        with pytest.raises(ValueError):
            Config(**bad)


def test_forward_receiver_is_told_the_chain_end_to_end():
    """The listener of an amplify-and-forward chain: gain G = g^(H-1), noise sigma^2 sum_k g^(2k), so that
    G^2 / noise = 1 / ((1 + sigma^2)^H - 1), the end-to-end SNR of the report."""
    import environments
    from experiments.relay import _forward_receiver

    for snr, hops in ((0.0, 1), (0.0, 3), (10.0, 8)):
        sigma = 10 ** (-snr / 20)
        env = environments.make("relay_v0", passages=np.arange(16).reshape(2, 8), hops=hops, channel_uses=4,
                                channel=environments.AWGN(sigma), mode="forward", task="reconstruct")
        gain, channel = _forward_receiver(env, sigma)
        assert gain == pytest.approx((1 + sigma**2) ** (-(hops - 1) / 2))
        assert 10 * math.log10(gain**2 / channel.sigma**2) == pytest.approx(end_to_end_snr_db(snr, hops))


@pytest.mark.slow
def test_trials_are_deterministic_and_noise_free_forward_is_one_hop(tiny):
    cfg, dirs, settings, passages = tiny
    specs = [{"mode": "forward", "hops": 3, "snr_db": 0.0, "seed": 2},
             {"mode": "regenerate", "hops": 2, "snr_db": 0.0, "seed": 2},
             {"mode": "reencode", "hops": 2, "snr_db": 10.0, "seed": 2},
             {"mode": "forward", "hops": 3, "snr_db": math.inf, "seed": 2},
             {"mode": "forward", "hops": 1, "snr_db": math.inf, "seed": 2}]
    runs = [[play_trial(s, _pool(cfg, dirs, 3), passages, settings) for s in specs] for _ in range(2)]
    frames = [pd.DataFrame(r, columns=COLUMNS) for r in runs]
    pd.testing.assert_frame_equal(*frames)  # same seed, fresh agents: the same rows
    rows = runs[0]
    assert rows[1]["mcs"] in {k.split("#", 1)[1] for k in settings["variants"]["separation@16"]}
    assert rows[1]["bits_sent"] > 0 and math.isnan(rows[0]["bits_sent"])
    assert rows[0]["sigma"] == 1.0 and rows[3]["sigma"] == 0.0
    # noise-free amplify-and-forward: every relay passes the symbols on unchanged, H = 3 is H = 1
    for c in ("token_accuracy", "chrf", "example", "example_target"):
        assert rows[3][c] == rows[4][c]
    assert rows[0]["example_target"] == rows[3]["example_target"]  # the same passages whatever the mode and SNR
    for r in rows:
        assert 0 <= r["token_accuracy_ci_low"] <= r["token_accuracy"] <= r["token_accuracy_ci_high"] <= 1


class _LossyCodec:
    """A stand-in agent whose digital link loses tokens at a known rate per hop (accuracy never grows along a
    chain): ``encode`` sends the ids as symbols, ``decode`` rounds them back and zeroes ``first`` more tokens on the
    first hop (no zero yet) and ``later`` more on every later hop. Counts its decodes."""

    def __init__(self, loss: dict[str, tuple[int, int]]):
        self.loss, self.decodes = loss, 0

    def encode(self, key, ids):
        return np.asarray(ids, np.float32)

    def decode(self, key, symbols, channel=None, gain=None):
        self.decodes += 1
        ids = np.rint(symbols).astype(np.int64)
        for row in ids:
            first, later = self.loss[key]
            alive = np.flatnonzero(row)
            row[alive[: first if len(alive) == row.size else later]] = 0
        return ids


def test_pruned_oracle_search_on_chains_that_only_lose():
    """Branch and bound over the hops picks what playing every MCS through every hop picks (the first in bank order
    on ties), with the same pilot accuracy, in fewer decodes, when accuracy never grows along a chain."""
    from experiments.common.links import pick_best
    from experiments.common.sweep import make_channel
    from experiments.relay import oracle

    passages = np.random.default_rng(0).integers(1, 50, size=(64, 16))
    # a: best on one hop, tied with b on two (a first in bank order), behind on four; b and c tie throughout (b
    # first); d loses nothing after its first hop but is already behind the best four-hop chain there
    loss = {"a": (1, 3), "b": (2, 2), "c": (2, 2), "d": (9, 0)}
    settings = {"channel_uses": 16, "pilot": 8, "episodes": 8, "vocab_size": 50}
    for hops, want in ((1, "a"), (2, "a"), (4, "b")):
        spec, picks = {"mode": "regenerate", "hops": hops, "snr_db": math.inf, "seed": 3}, {}
        for prune in (False, True):
            agent = _LossyCodec(loss)
            pool = {"speaker": agent, "listener": agent, **{f"relay{h}": agent for h in range(hops - 1)}}
            best, scores = oracle(list(loss), spec, pool, passages, make_channel("awgn", 0.0), settings, prune=prune)
            picks[prune] = (best, scores[best], agent.decodes, scores)
        assert picks[False][0] == picks[True][0] == want == pick_best(list(loss), picks[False][3].__getitem__)
        assert picks[True][1] == picks[False][1] == 1 - (loss[want][0] + (hops - 1) * loss[want][1]) / 16
        assert picks[True][2] <= picks[False][2] == 4 * hops
        assert all(picks[True][3][k] >= picks[False][3][k] for k in loss)  # dropped early: never scored lower
    assert picks[True][2] == 4 + 4 + 4 + 1  # H = 4: d is dropped after its first hop


def _row(mode, hops, snr, acc, half=0.02):
    row = dict.fromkeys(COLUMNS)
    row.update(mode=mode, hops=hops, snr_db=snr, episodes=100, seed=0, token_accuracy=acc,
               token_accuracy_ci_low=acc - half, token_accuracy_ci_high=acc + half, chrf=50.0, chrf_ci_low=49.0,
               chrf_ci_high=51.0, mcs=None)
    return row


def test_first_below_on_known_rows():
    rows = [_row("forward", h, 0.0, a) for h, a in zip((1, 2, 3, 4), (0.9, 0.8, 0.5, 0.3))]
    rows += [_row("regenerate", h, 0.0, a) for h, a in zip((1, 2, 3, 4), (0.7, 0.7, 0.7, 0.69))]
    rows += [_row("forward", h, 10.0, 0.95) for h in (1, 2, 3, 4)] + [_row("regenerate", h, 10.0, 0.94) for h in (1, 2, 3, 4)]
    table = pooled(pd.DataFrame(rows, columns=COLUMNS))
    found = first_below(table).set_index("snr_db")
    assert found.loc[0.0, "hops_at"] == 3 and found.loc[0.0, "apart"]
    assert found.loc[10.0, "never"] and not found.loc[0.0, "never"] and math.isnan(found.loc[10.0, "hops_at"])
    assert found.loc[10.0, "max_hops"] == 4 and not found.loc[10.0, "apart"]
    lines = crossing_lines(table)
    assert lines[0] == ("at 0 dB analog forward falls below digital regenerate at H = 3 (0.500 vs 0.700 token "
                        "accuracy, 95% intervals apart)")
    assert lines[1].startswith("at 10 dB analog forward never falls below digital regenerate, up to 4 hops")
    # first below with overlapping intervals, apart one hop later; a grid with gaps is named
    rows[1], rows[5] = _row("forward", 2, 0.0, 0.69), _row("regenerate", 2, 0.0, 0.7)
    table = pooled(pd.DataFrame([r for r in rows if r["hops"] != 3], columns=COLUMNS))
    assert crossing_lines(table)[0] == ("at 0 dB analog forward falls below digital regenerate at H = 2 (0.690 vs "
                                        "0.700 token accuracy, 95% intervals overlapping; first apart at H = 4; hop "
                                        "counts of this grid: [1, 2, 4])")
    assert end_to_end_snr_db(0.0, 1) == pytest.approx(0.0) and end_to_end_snr_db(math.inf, 5) == math.inf


@pytest.mark.slow
def test_tiny_sweep_on_ray_resumes_without_losing_or_doubling_rows(tiny, tmp_path):
    """The vector modes only: agents without the separation bank start without Sionna, seconds faster each (the
    regenerate relays call the same ``relay`` method; the bank reaches actors in the reconstruction sweep's test)."""
    cfg, dirs, settings, passages = tiny
    base = dataclasses.replace(cfg, results_dir=str(tmp_path), run_name="tiny", modes=("forward", "reencode"),
                               hops=(1, 2), snrs_db=(0.0,), seeds=(5,), max_concurrent=1, address="local",
                               num_cpus=2)  # 4 trials: 2 modes x 2 hop counts
    first = main(dataclasses.replace(base, max_trials=2))
    assert len(first.ran) == 2 and first.rows == 2 and first.total == 4
    second = main(base)
    assert second.rows == second.total == 4 and not set(second.ran) & set(first.ran)
    assert len(first.ran) + len(second.ran) == 4
    assert main(base).ran == []
    frame = pd.read_csv(second.run_dir / "results.csv")
    assert list(frame.columns) == COLUMNS and len(frame) == 4
    assert not frame.duplicated(["mode", "hops", "snr_db"]).any()
    summary = (second.run_dir / "summary.md").read_text()
    assert "(forward end-to-end Es/N0 dB)" in summary and "a mode is missing: no comparison" in summary
    # the rows the interrupted, resumed sweep wrote are those of one uninterrupted in-process run
    from experiments.common.links import fit_protocols

    dirs, variants, *_ = fit_protocols(base, cfg.checkpoint, second.run_dir / "protocols",
                                       protocols=("vector",), budgets=[16])
    alone = pd.DataFrame([play_trial(spec, _pool(base, dirs, 2), passages, {**settings, "variants": variants})
                          for spec in trial_grid(base)], columns=COLUMNS)
    alone["checkpoint"] = frame["checkpoint"]
    pd.testing.assert_frame_equal(frame, pd.read_csv(io.StringIO(alone.to_csv(index=False))))
