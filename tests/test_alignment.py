"""protocols.alignment maps and experiments.alignment: known maps are recovered, saved maps reload bit for bit,
trials are deterministic, a tiny sweep resumes without doubling rows, --help lists every flag."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from protocols.alignment import METHODS, AlignmentConfig, LatentAlignment

pytestmark = pytest.mark.ray


def _rotated(n: int = 16, m: int = 16, M: int = 600, seed: int = 0):
    """Anchors x and their image under a random partial isometry times 1.5 plus an offset."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(M, n))
    q, _ = np.linalg.qr(rng.normal(size=(max(n, m), max(n, m))))
    return x, 1.5 * x @ q[:n, :m] + rng.normal(size=m)


@pytest.mark.parametrize("method", ["procrustes", "ridge"])
def test_linear_maps_recover_a_rotation_and_offset(method):
    x, y = _rotated()
    fit = LatentAlignment(AlignmentConfig(method=method)).fit(x[:200], y[:200])
    assert np.abs(fit.transform(x[200:]) - y[200:]).max() < 1e-2


def test_procrustes_maps_between_different_sizes():
    """n = 16 -> n' = 24: a partial isometry; the target is recovered exactly from enough anchors."""
    x, y = _rotated(16, 24)
    fit = LatentAlignment(AlignmentConfig(method="procrustes")).fit(x[:100], y[:100])
    assert fit.transform(x[100:]).shape == (500, 24)
    assert np.abs(fit.transform(x[100:]) - y[100:]).max() < 1e-8


def test_mlp_learns_a_nonlinear_map_a_linear_one_cannot():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 4))
    y = np.stack([np.abs(x[:, 0]), x[:, 1] * x[:, 2], np.tanh(x[:, 3]), x[:, 0] ** 2], axis=1)
    errors = {}
    for method in ("ridge", "mlp"):
        fit = LatentAlignment(AlignmentConfig(method=method, hidden_size=64, max_iter=300)).fit(x[:1500], y[:1500])
        errors[method] = float(np.mean((fit.transform(x[1500:]) - y[1500:]) ** 2))
    assert errors["mlp"] < 0.5 * errors["ridge"]


def test_few_anchors_give_a_worse_map_than_many():
    x, y = _rotated(32, 32)
    noisy = y + np.random.default_rng(2).normal(scale=0.3, size=y.shape)
    err = {}
    for M in (8, 400):
        fit = LatentAlignment(AlignmentConfig(method="ridge")).fit(x[:M], noisy[:M])
        err[M] = float(np.mean((fit.transform(x[400:]) - y[400:]) ** 2))
    assert err[400] < 0.2 * err[8]


@pytest.mark.parametrize("method", [*METHODS, "none"])
def test_saved_map_reloads_bit_for_bit(method, tmp_path):
    x, y = _rotated()
    fit = LatentAlignment(AlignmentConfig(method=method, max_iter=50)).fit(x[:64], y[:64])
    fit.save(tmp_path / "map")
    assert not list(tmp_path.glob("map/*.pkl"))
    again = LatentAlignment.load(tmp_path / "map")
    assert np.array_equal(again.transform(x[64:]), fit.transform(x[64:]))
    assert np.array_equal(LatentAlignment.from_arrays(fit.to_arrays()).transform(x[64:]), fit.transform(x[64:]))


def test_bad_inputs_are_refused():
    x, y = _rotated()
    with pytest.raises(ValueError, match="method must be"):
        AlignmentConfig(method="cca")
    with pytest.raises(ValueError, match="needs >= 4 anchors"):
        LatentAlignment(AlignmentConfig(method="mlp")).fit(x[:3], y[:3])
    with pytest.raises(ValueError, match="same M anchors"):
        LatentAlignment().fit(x[:10], y[:11])
    with pytest.raises(ValueError, match="identity map needs equal sizes"):
        LatentAlignment(AlignmentConfig(method="none")).fit(x[:0], np.zeros((0, 8)))
    with pytest.raises(RuntimeError, match="not fitted"):
        LatentAlignment().transform(x)
    fit = LatentAlignment().fit(x[:20], y[:20])
    with pytest.raises(ValueError, match="must be"):
        fit.transform(x[:, :3])


# ---------------------------------------------------------------------------------------------------------
# the experiment


def test_retokenize_keeps_the_text_and_masks_the_padding():
    from calm.tokenizer import get_tokenizer
    from experiments.alignment import retokenize

    a, b = get_tokenizer("bpe:2048"), get_tokenizer("bpe:1024")
    ids = np.array([a.encode(" And God said, Let there be light: and there was light.")[:8],
                    a.encode(" the")[:1] + [a.encode(" the")[0]] * 7])
    out, mask = retokenize(ids, a, b, 12)
    assert out.shape == mask.shape == (2, 12)
    for row, m, src in zip(out, mask, ids):
        text = b.decode(row[m].tolist())
        assert a.decode(src.tolist()).startswith(text)
    assert mask[0].sum() >= 8  # the finer tokenizer needs at least as many tokens


def test_candidates_hold_the_target_once_at_its_slot():
    from experiments.common.multiagent import draw_candidates

    index = np.array([0, 5, 9, 3])
    cands, slot = draw_candidates(np.random.default_rng(0), index, 10, 6)
    assert cands.shape == (4, 6)
    assert (cands[np.arange(4), slot] == index).all()
    assert ((cands == index[:, None]).sum(axis=1) == 1).all()


@pytest.fixture(scope="module")
def agents_tiny(tmp_path_factory):
    """Two tiny random autoencoders with the same tokenizer (another seed) and one with another tokenizer."""
    import torch

    from calm.autoencoder import Autoencoder, preset
    from calm.checkpoint import save_pretrained
    from calm.tokenizer import get_tokenizer

    root = tmp_path_factory.mktemp("tiny-align")
    out = {}
    for name, spec, seed in (("a", "bpe:2048", 0), ("b", "bpe:2048", 1), ("c", "bpe:1024", 2)):
        torch.manual_seed(seed)
        tok = get_tokenizer(spec)
        ae = Autoencoder(preset("tiny", vocab_size=len(tok), hidden_size=32, intermediate_size=64, latent_dim=8))
        save_pretrained(ae, root / name, tok)
        out[name] = root / name
    return out


def _cfg(agents_tiny, tmp_path, **kw):
    from experiments.alignment import Config

    base = dict(checkpoint=str(agents_tiny["a"]), seed_checkpoint=str(agents_tiny["b"]),
                tokenizer_checkpoint=str(agents_tiny["c"]), pairings=("same", "seed", "tokenizer"), passage_length=8,
                channel_uses=16, anchors=(0, 64), methods=("procrustes", "ridge"), sigmas=(0.0,), episodes=32,
                batch_size=32, num_passages=200, fit_passages=200, pilot_passages=16, num_candidates=4,
                token_protocols=("uncoded-tokens",), results_dir=str(tmp_path / "results"), plots=False)
    return Config(**{**base, **kw})


@pytest.mark.slow
def test_trials_are_deterministic_and_same_weights_win(agents_tiny, tmp_path):
    """In-process agents: the same grid point twice gives the same row; with no noise the same-weights vector
    finds the target every time, and the identity map between different weights does worse."""
    from agents import CALMAgentCore
    from experiments.alignment import fit_alignments, play_trial, prepare_agents, trial_grid, trial_settings

    cfg = _cfg(agents_tiny, tmp_path)
    members, facts, passages = prepare_agents(cfg, tmp_path)
    maps = fit_alignments(cfg, facts, tmp_path)
    settings = trial_settings(cfg, facts, maps, passages)
    grid = {spec["key"]: spec for spec in trial_grid(cfg)}
    rows = {}
    for key in ("vector-same-none-a0-s0.0-seed0", "vector-seed-none-a0-s0.0-seed0", "vector-seed-ridge-a64-s0.0-seed0",
                "vector-tokenizer-procrustes-a64-s0.0-seed0", "uncoded-tokens-tokenizer---a0-s0.0-seed0"):
        spec = grid[key]
        runs = []
        for _ in range(2):
            speaker = CALMAgentCore(str(members["speaker"][0]), members["speaker"][1])
            name = f"listener-{spec['pairing']}"
            listener = CALMAgentCore(str(members[name][0]), members[name][1])
            runs.append(play_trial(spec, speaker, listener, passages, settings))
        assert json.dumps(runs[0], sort_keys=True) == json.dumps(runs[1], sort_keys=True)
        rows[key] = runs[0]
    assert rows["vector-same-none-a0-s0.0-seed0"]["success"] == 1.0
    assert rows["vector-seed-none-a0-s0.0-seed0"]["success"] < 0.9
    assert 0.0 <= rows["uncoded-tokens-tokenizer---a0-s0.0-seed0"]["token_accuracy"] <= 1.0


def test_help_lists_every_field(capsys):
    from calm.cli import parse_config
    from experiments.alignment import Config, trial_grid

    with pytest.raises(SystemExit) as exc:
        parse_config(Config, ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert f"--{f.name.replace('_', '-')}" in out
    cfg = parse_config(Config, ["--pairings", "same", "tokenizer", "--anchors", "0", "16", "--methods", "ridge"])
    # same: the identity; tokenizer: the identity + ridge at 16; one token link each; x 2 sigmas
    assert len(trial_grid(cfg)) == (1 + 1 + 1 + 1 + 1) * 2
    with pytest.raises(ValueError, match="pairings"):
        Config(pairings=("telepathy",))
    with pytest.raises(ValueError, match="anchors"):
        Config(anchors=(0, 2))


@pytest.mark.slow
def test_tiny_sweep_resumes_without_doubling_rows(agents_tiny, tmp_path):
    """On Ray with an agent pool: stop after 2 trials, rerun: every row once; a third run has nothing to do.
    Three trials: same weights, another seed read as is, and through a fitted map (which reaches the actors)."""
    from experiments.alignment import main

    cfg = _cfg(agents_tiny, tmp_path, pairings=("same", "seed"), methods=("procrustes",), token_protocols=(),
               max_concurrent=1, run_name="resume")
    first = main(dataclasses.replace(cfg, max_trials=2))
    assert (first.rows, first.total) == (2, 3)
    second = main(cfg)
    assert second.rows == second.total == 3 and len(second.ran) == 1 and not set(second.ran) & set(first.ran)
    frame = pd.read_csv(second.run_dir / "results.csv")
    assert len(frame) == 3 and frame["pairing"].tolist().count("same") == 1
    assert frame.loc[frame.pairing == "same", "success"].iloc[0] == 1.0  # noiseless, same weights
    assert main(cfg).ran == []
