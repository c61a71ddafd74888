"""experiments.reconstruction's trials played in this process, without Ray: one trial row is deterministic, and
separation-lm plays its trials under either oracle rule. The sweep on Ray is tests/test_reconstruction.py's."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest

from experiments.reconstruction import COLUMNS, play_trial


@pytest.fixture(scope="module")
def base(reconstruction_tiny):
    """The tiny sweep (tests/conftest.py's ``reconstruction_tiny``)."""
    return reconstruction_tiny


@pytest.mark.slow
def test_one_trial_row_is_identical_across_runs(base, tmp_path):
    """Two runs of the same grid point with the same seed give the same row (in-process agents)."""
    from agents import CALMAgentCore
    from experiments.common.links import fit_protocols
    from experiments.common.models import checkpoint_id, ensure_checkpoint
    from experiments.reconstruction import channel_uses, validation_passages

    cfg = dataclasses.replace(base, protocols=("vector", "separation"))
    checkpoint = ensure_checkpoint(cfg)
    dirs, variants, facts, skipped, passages = fit_protocols(
        cfg, checkpoint, tmp_path, protocols=cfg.protocols, budgets=[channel_uses(cfg, r) for r in cfg.rhos])
    assert not skipped
    settings = {"episodes": 32, "batch_size": 32, "passage_length": 8, "vocab_size": facts["vocab_size"],
                "K": facts["K"], "variants": variants, "bits_sent": facts["bits_sent"],
                "entropy_bits_per_token": facts["entropy_bits_per_token"], "fill_accuracy": facts["fill_accuracy"],
                "guess": facts["guess"], "oracle_passages": validation_passages(cfg, checkpoint),
                "oracle_dir": str(tmp_path / "rate_picks"), "checkpoint": checkpoint_id(checkpoint), "erasure_p": 0.1, "fading_block": None,
                "tokenizer_path": str(checkpoint / "tokenizer.json")}
    rows = []
    for _ in range(2):
        speaker, listener = CALMAgentCore(str(checkpoint), dirs), CALMAgentCore(str(checkpoint), dirs)
        rows.append([play_trial({"protocol": p, "channel": "awgn", "rho": 2.0, "channel_uses": 16, "sigma": 0.5,
                                 "seed": 3}, speaker, listener, passages, settings) for p in ("vector", "separation")])
    # NaN-aware equality (the analog vector sends no bits: bits_sent is NaN)
    pd.testing.assert_frame_equal(pd.DataFrame(rows[0], columns=COLUMNS), pd.DataFrame(rows[1], columns=COLUMNS))
    assert rows[0][1]["mcs"] is not None
    assert 0 <= rows[0][1]["mcs_val_accuracy"] <= 1 and math.isnan(rows[0][0]["mcs_val_accuracy"])
    assert list((tmp_path / "rate_picks").glob("*.json"))  # the pick, cached once for the channel state


@pytest.mark.slow
@pytest.mark.parametrize("options", [{}, {"separation_header": "huffman", "separation_lm_mix": 0.5}])
def test_separation_lm_plays_its_trials_in_process(base, tmp_path, options):
    """separation-lm (the token LM as the separation link's source model; also mixed with the bigram, with Huffman
    headers) through fit_protocols and in-process agents: a bank per n that records the LM, a row under either
    oracle rule, and agents refuse the bank without its LM."""
    import torch

    from agents import CALMAgentCore
    from calm.baseline import TokenTransformer
    from calm.baseline import preset as baseline_preset
    from calm.checkpoint import save_pretrained
    from calm.tokenizer import load_tokenizer
    from experiments.common.links import fit_protocols
    from experiments.common.models import checkpoint_id, ensure_checkpoint
    from experiments.reconstruction import validation_passages

    # 128 training passages (the sweep's 512 would be the huffman header's sample of T: four times the LM coding)
    cfg = dataclasses.replace(base, protocols=("separation-lm",), fit_passages=128, **options)
    checkpoint = ensure_checkpoint(cfg)
    tok = load_tokenizer(str(checkpoint / "tokenizer.json"))
    torch.manual_seed(0)
    lm = TokenTransformer(baseline_preset("tiny", len(tok), hidden_size=32, num_layers=1, num_heads=2,
                                          intermediate_size=64, max_positions=64)).eval()
    save_pretrained(lm, tmp_path / "lm", tok)
    dirs, variants, facts, skipped, passages = fit_protocols(cfg, checkpoint, tmp_path / "protocols",
                                                             protocols=cfg.protocols, budgets=[16],
                                                             token_lm=tmp_path / "lm")
    assert not skipped and list(dirs) == ["separation-lm@16"] and len(variants["separation-lm@16"]) > 1
    assert facts["entropy_bits_per_token_lm"] > 0
    saved = json.loads((tmp_path / "protocols" / "separation-lm@16" / "protocol.json").read_text())["config"]
    assert saved.get("header_code", "fixed") == options.get("separation_header", "fixed")
    assert saved.get("lm_mix", 0.0) == options.get("separation_lm_mix", 0.0)
    settings = {"episodes": 32, "batch_size": 32, "passage_length": 8, "vocab_size": facts["vocab_size"],
                "K": facts["K"], "variants": variants, "bits_sent": facts["bits_sent"],
                "entropy_bits_per_token": facts["entropy_bits_per_token"], "fill_accuracy": facts["fill_accuracy"],
                "guess": facts["guess"], "oracle_passages": validation_passages(cfg, checkpoint)[:32],
                "checkpoint": checkpoint_id(checkpoint), "erasure_p": 0.1, "fading_block": None,
                "tokenizer_path": str(checkpoint / "tokenizer.json")}
    agent = CALMAgentCore(str(checkpoint), dirs, token_lm_checkpoint=str(tmp_path / "lm"))
    for rule in ("fill", "exact"):
        row = play_trial({"protocol": "separation-lm", "channel": "awgn", "rho": 2.0, "channel_uses": 16,
                          "sigma": 0.5, "seed": 3}, agent, agent, passages,
                         {**settings, "lm_oracle_rule": rule, "oracle_dir": str(tmp_path / rule)})
        assert row["mcs"] is not None and 0 <= row["token_accuracy"] <= 1 and row["bits_sent"] > 0
        assert (tmp_path / rule / "separation-lm@16-awgn-s0.5.json").is_file()
    with pytest.raises(ValueError, match="token LM"):
        CALMAgentCore(str(checkpoint), dirs)
