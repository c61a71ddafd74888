"""experiments.dialogue: seeded turns are deterministic, a sweep resumes without doubling rows, --help works."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from experiments.dialogue import COLUMNS, Config, fit_latent_power, main, play_trial, trial_grid

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A randomly initialised tiny K = 2 autoencoder and a CALM around it, saved to a temporary directory."""
    import torch

    from calm.autoencoder import Autoencoder, preset
    from calm.checkpoint import save_pretrained
    from calm.energy_transformer import EnergyTransformer
    from calm.energy_transformer import preset as calm_preset
    from calm.tokenizer import get_tokenizer

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-dialogue")
    tok = get_tokenizer("bpe:8192")
    ae = Autoencoder(preset("tiny-k2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, latent_dim=8))
    save_pretrained(ae, root / "ae", tok)
    cfg = calm_preset("tiny", ae.config, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                      head_intermediate_size=32, max_patches=32)
    lm = EnergyTransformer(cfg, autoencoder=ae)
    with torch.no_grad():  # the zero-initialised output layer would send only the origin: give it weights
        lm.head.out.weight.normal_(std=0.5)
    save_pretrained(lm, root / "lm", tok)
    return root / "ae", root / "lm"


def _settings(lm, stats) -> dict:
    from experiments.dialogue import lm_config_of

    c = lm_config_of(lm)
    return {"K": c.K, "chunks": 3, "latent_dim": c.ae_config.latent_dim, "vocab_size": c.vocab_size, "stats": stats,
            "episodes": 2, "turns": 3, "receiver": "lmmse", "erasure_p": 0.1, "fading_block": None,
            "checkpoint": "tiny", "lm_path": str(lm), "tokenizer_path": str(lm / "tokenizer.json")}


def test_dialogue_turns_are_deterministic_with_a_seed(tiny):
    """The same seed gives the same rows and transcript with fresh agents; noiseless latents arrive intact."""
    from agents import CALMAgentCore

    ae, lm = tiny
    prompts = np.random.default_rng(0).integers(2, 500, size=(10, 8))
    rows = []
    for _ in range(2):
        a, b = CALMAgentCore(str(ae), {}, lm_checkpoint=str(lm)), CALMAgentCore(str(ae), {}, lm_checkpoint=str(lm))
        stats = fit_latent_power(a, prompts[:4], 3)
        settings = _settings(lm, stats)
        rows.append([play_trial({"protocol": p, "channel": "awgn", "sigma": s, "seed": 4}, a, b, prompts, settings)
                     for p in ("latent", "tokens") for s in (0.0, 0.5)])
    for first, second in zip(*rows):
        assert first["transcript"] == second["transcript"]
    timing = [c for c in COLUMNS if c.startswith("wall_")]
    frames = [pd.DataFrame(r, columns=COLUMNS).drop(columns=timing) for r in rows]
    pd.testing.assert_frame_equal(*frames)
    frame = frames[0].set_index(["protocol", "sigma"])
    assert frame.loc[("latent", 0.0), "token_accuracy"] == 1.0 and frame.loc[("tokens", 0.0), "token_accuracy"] == 1.0
    assert frame.loc[("latent", 0.0), "channel_uses"] == 3 * 8  # 3 chunks x l = 8
    assert frame.loc[("tokens", 0.0), "channel_uses"] == 3 * 2 * 13  # 6 tokens x 13 bits
    # the latent receiver also runs the autoencoder decoder; the sender's generation is the same on both paths
    assert frame.loc[("latent", 0.5), "flops_receiver"] > frame.loc[("tokens", 0.5), "flops_receiver"]
    assert frame.loc[("latent", 0.5), "flops_sender"] == frame.loc[("tokens", 0.5), "flops_sender"]
    transcript = json.loads(frame.loc[("latent", 0.5), "transcript"])
    assert [m["sender"] for m in transcript] == ["prompt", "A", "B", "A"]
    # the first message is generated from the same prompt and seed on both paths
    assert transcript[1]["sent"] == json.loads(frame.loc[("tokens", 0.5), "transcript"])[1]["sent"]


def test_help_lists_every_field(capsys):
    from calm.cli import parse_config

    with pytest.raises(SystemExit) as exc:
        parse_config(Config, ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in out
    cfg = parse_config(Config, ["--protocols", "latent", "--sigmas", "0", "1", "--lm-checkpoint", "none"])
    assert cfg.protocols == ("latent",) and cfg.sigmas == (0.0, 1.0) and cfg.lm_checkpoint is None
    assert len(trial_grid(Config())) == 2 * 1 * 4 * 1
    with pytest.raises(ValueError, match="protocols"):
        Config(protocols=("telepathy",))


@pytest.mark.slow
def test_tiny_sweep_resumes_without_doubling_rows(tiny, tmp_path):
    ae, lm = tiny
    base = Config(checkpoint=str(ae), lm_checkpoint=str(lm), tokenizer="bpe:8192", results_dir=str(tmp_path),
                  run_name="tiny", sigmas=(1.0,), episodes=2, turns=2, chunks_per_message=2, prompt_tokens=8,
                  fit_prompts=4, num_passages=20, max_concurrent=1)  # 2 trials: latent, tokens
    first = main(dataclasses.replace(base, max_trials=1))
    assert len(first.ran) == 1 and first.rows == 1
    second = main(base)
    assert second.rows == second.total == 2 and not set(second.ran) & set(first.ran)
    frame = pd.read_csv(second.run_dir / "results.csv")
    assert list(frame.columns) == COLUMNS and len(frame) == 2
    assert "Latent vs tokens" in (second.run_dir / "summary.md").read_text()
    assert "received" in (second.run_dir / "transcripts.md").read_text()
    assert main(base).ran == []
