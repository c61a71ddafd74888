"""calm.sae (TopK SAE, SAELens's on-disk format) and experiments.compare_sae."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from calm.sae import (
    TopKSAE,
    dead_features,
    feature_frequency,
    fraction_variance_explained,
    load_sae,
    mean_l0,
    save_sae,
    train_sae,
)

# the keys of the cfg.json SAELens 6.54.12's TopKSAE.save_model writes (seen on a real install, docs/sae.md)
SAELENS_TOPK_KEYS = {"d_in", "d_sae", "dtype", "device", "apply_b_dec_to_input", "normalize_activations",
                     "reshape_activations", "metadata", "k", "rescale_acts_by_decoder_norm", "architecture"}


def random_sae(d_in: int = 8, d_sae: int = 24, k: int = 3, seed: int = 0) -> TopKSAE:
    torch.manual_seed(seed)
    sae = TopKSAE(d_in, d_sae, k)
    with torch.no_grad():
        for p in sae.parameters():
            p.normal_()
    return sae


def write_cfg(directory, cfg: dict, sae: TopKSAE) -> None:
    """A directory with ``cfg`` as cfg.json and ``sae``'s weights."""
    save_sae(sae, directory)
    (directory / "cfg.json").write_text(json.dumps(cfg))


def test_round_trip_in_saelens_layout(tmp_path):
    from safetensors import safe_open

    sae = random_sae()
    save_sae(sae, tmp_path / "s", hook_name="calm.latent", model_name="m")
    cfg = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert set(cfg) == SAELENS_TOPK_KEYS
    assert (cfg["architecture"], cfg["k"], cfg["d_in"], cfg["d_sae"], cfg["normalize_activations"]) == ("topk", 3, 8,
                                                                                                         24, "none")
    assert cfg["metadata"]["hook_name"] == "calm.latent" and cfg["metadata"]["sae_lens_version"].startswith("6.")
    with safe_open(str(tmp_path / "s" / "sae_weights.safetensors"), framework="pt") as f:
        shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    assert shapes == {"W_enc": (8, 24), "b_enc": (24,), "W_dec": (24, 8), "b_dec": (8,)}
    back = load_sae(tmp_path / "s")
    x = torch.randn(50, 8)
    with torch.no_grad():
        assert torch.equal(back.encode(x), sae.encode(x)) and torch.equal(back(x), sae(x))
    assert back.k == 3 and back.metadata["model_name"] == "m"


def test_reads_saelens_layouts(tmp_path):
    sae = random_sae(k=4)
    x = torch.randn(30, 8)
    # as SAELens 6.54.12 wrote it (its metadata carries its own version)
    v6 = {"d_in": 8, "d_sae": 24, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
          "normalize_activations": "none", "reshape_activations": "none",
          "metadata": {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12"}, "k": 4,
          "rescale_acts_by_decoder_norm": False, "architecture": "topk"}
    # SAELens < 6: a "standard" SAE with a topk activation function
    legacy = {"architecture": "standard", "d_in": 8, "d_sae": 24, "dtype": "float32", "activation_fn_str": "topk",
              "activation_fn_kwargs": {"k": 4}, "apply_b_dec_to_input": True, "normalize_activations": "none",
              "hook_name": "blocks.0.hook_resid_pre", "sae_lens_training_version": "3.5.0"}
    for name, cfg in (("v6", v6), ("legacy", legacy)):
        write_cfg(tmp_path / name, cfg, sae)
        with torch.no_grad():
            assert torch.equal(load_sae(tmp_path / name)(x), sae(x)), name
    # the formula itself: TopK of the pre-activations, ReLU'd; decode adds b_dec
    with torch.no_grad():
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        kth = pre.topk(4, dim=-1).values[:, -1:]
        f = torch.where(pre >= kth, pre.relu(), torch.zeros(()))
        assert torch.allclose(sae.encode(x), f) and torch.allclose(sae.decode(f), f @ sae.W_dec + sae.b_dec)


@pytest.mark.parametrize("change, message", [
    ({"architecture": "jumprelu"}, "'jumprelu'"),
    ({"architecture": "gated"}, "'gated'"),
    ({"normalize_activations": "expected_average_only_in"}, "expected_average_only_in"),
    ({"metadata": {}, "architecture": "standard", "activation_fn_str": "relu"}, "standard"),
])
def test_rejects_what_it_does_not_compute(tmp_path, change, message):
    sae = random_sae()
    save_sae(sae, tmp_path)
    cfg = {**json.loads((tmp_path / "cfg.json").read_text()), **change}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=message):
        load_sae(tmp_path)
    with pytest.raises(ValueError, match="cfg.json"):
        load_sae(tmp_path / "nothing")


def test_topk_keeps_exactly_k():
    sae = random_sae(d_in=8, d_sae=40, k=5)
    x = torch.randn(200, 8)
    with torch.no_grad():
        assert ((sae.encode(x) > 0).sum(-1) <= 5).all()
        sae.b_enc.fill_(100.0)  # every pre-activation positive: exactly k survive
        f = sae.encode(x)
    assert ((f > 0).sum(-1) == 5).all()
    assert mean_l0(sae, x) == pytest.approx(5.0)
    assert dead_features(sae, x) == 40 - int((feature_frequency(sae, x) > 0).sum())


def test_fve_is_one_minus_sse_over_variance():
    sae = random_sae()
    x = torch.randn(100, 8) * 3 + 1
    with torch.no_grad():
        sse = ((sae(x) - x) ** 2).sum()
    assert fraction_variance_explained(sae, x) == pytest.approx(1 - float(sse / ((x - x.mean(0)) ** 2).sum()),
                                                                 rel=1e-5)


def test_training_recovers_a_known_dictionary():
    # x = sparse non-negative codes (3 of 32 atoms) @ unit atoms + an offset: the SAE should find the atoms
    g = torch.Generator().manual_seed(0)
    atoms = torch.randn(32, 16, generator=g)
    atoms /= atoms.norm(dim=-1, keepdim=True)
    N = 8000
    idx = torch.rand(N, 32, generator=g).argsort(-1)[:, :3]
    codes = torch.zeros(N, 32).scatter(-1, idx, torch.rand(N, 3, generator=g) * 2 + 0.5)
    x = codes @ atoms + 0.5
    sae = train_sae(x, 64, 3, steps=300, batch_size=256, lr=3e-3, seed=0)
    assert fraction_variance_explained(sae, x) > 0.85
    assert torch.allclose(sae.W_dec.norm(dim=-1), torch.ones(64), atol=1e-4)  # unit decoder rows kept
    cosine = (atoms @ sae.W_dec.detach().T).max(1).values  # (32,) best match of every atom
    assert (cosine > 0.9).float().mean() >= 0.8


# ----------------------------------------------------------------------------------------------------------
# experiments.compare_sae


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory, tokenizer, train_ids):
    """A K = 2 autoencoder trained a few steps and an untrained tiny CALM around it."""
    from calm.autoencoder import preset
    from calm.checkpoint import save_pretrained
    from calm.energy_transformer import CalmTask
    from calm.tasks import train_autoencoder
    from calm.tokenizer import special_ids

    cfg = preset("tiny", K=2, latent_dim=16, hidden_size=32, intermediate_size=64, vocab_size=len(tokenizer),
                 pad_id=special_ids(tokenizer)[0])
    root = tmp_path_factory.mktemp("sae")
    save_pretrained(train_autoencoder(cfg, train_ids, steps=30, batch_size=64), root / "ae", tokenizer)
    calm_cfg = CalmTask.make_config("tiny", vocab_size=len(tokenizer), ae=str(root / "ae"), overrides={
        "hidden_size": 32, "num_layers": 1, "num_heads": 2, "intermediate_size": 64, "head_intermediate_size": 32,
        "max_patches": 16})
    save_pretrained(CalmTask(calm_cfg).build_model(), root / "calm", tokenizer)
    return root / "ae", root / "calm"


def test_compare_sae_end_to_end(tiny_models, tmp_path):
    from experiments.compare_sae import Config, main

    ae, lm = tiny_models
    small = dict(checkpoint=str(ae), lm_checkpoint=str(lm), results_dir=str(tmp_path), train_chunks=500,
                 test_chunks=300, window=8, expansions=(2,), ks=(2, 4), steps=40, max_classes=8, top_n=10)
    result = main(Config(run_name="s", **small))
    run = tmp_path / "s"
    for name in ("summary.md", "sae.csv", "analysis.json", "fve_l0.png", "matches.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    table = pd.read_csv(run / "sae.csv")
    assert sorted(zip(table["source"], table["k"])) == [("hidden", 2), ("hidden", 4), ("latent", 2), ("latent", 4)]
    assert set(table["d_sae"]) == {32, 64} and (table["l0_test"] <= table["k"] + 1e-9).all()
    assert (table["fve_test"] <= 1).all() and (table[["match_dim", "match_probe", "share_any"]].le(
        table["live_test"], axis=0)).all().all()
    saved = json.loads((run / "analysis.json").read_text())
    assert set(saved["strongest"]) == {"latent", "hidden"} and saved["command"] == result["command"]
    assert "## Held-out FVE vs L0" in (run / "summary.md").read_text()
    # a saved SAE (SAELens format) evaluated again instead of training: the same held-out figures
    given = run / "saes" / "hidden-x2-k4"
    assert load_sae(given).metadata["hook_name"] == "calm.hidden"
    again = main(Config(run_name="s2", sae=(str(given),), **small))
    assert len(again["saes"]) == 1 and again["saes"][0]["path"] == str(given)
    first = table[(table["source"] == "hidden") & (table["k"] == 4)].iloc[0]
    assert again["saes"][0]["fve_test"] == pytest.approx(first["fve_test"], abs=1e-6)


def test_cli_help_and_bad_input(tmp_path, capsys):
    from calm.cli import parse_config
    from experiments.compare_sae import Config

    # --help from the command's own parser, in this process (a command costs a Python start and the model imports);
    # the command itself runs below with bad input, and as a command in tests/test_hostile_studies.py
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Config, ["--help"], prog="python -m experiments.compare_sae")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--checkpoint", "--lm-checkpoint", "--sae", "--ks", "--expansions", "--sources"):
        assert flag in out
    bad = subprocess.run([sys.executable, "-m", "experiments.compare_sae", "--checkpoint", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "compare_sae: error:" in bad.stderr and "model.safetensors" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "experiments.compare_sae", "--ks", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "ks" in bad.stderr
