"""Steering (experiments.steering): labels, judge, directions, interventions, and a run on tiny checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from experiments.steering_methods import (
    Judge,
    activations,
    attribute_labels,
    attribute_tokens,
    calm_generate,
    codec_steer,
    judge_labels,
    logit_bias,
    mean_direction,
    probe_direction,
    residual_shift,
    token_nll,
)


def _cos(a, b) -> float:
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def test_a_planted_direction_is_recovered_and_noise_gives_none():
    rng = np.random.default_rng(0)
    d = 32
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    neg = rng.standard_normal((3000, d))
    pos = rng.standard_normal((3000, d)) + 1.5 * u
    mean, probe = mean_direction(pos, neg), probe_direction(pos, neg, max_rows=2000)
    assert _cos(mean, u) > 0.95 and _cos(probe, u) > 0.9
    assert np.isclose(np.linalg.norm(probe), np.linalg.norm(mean))  # one alpha, one step length
    assert abs(np.linalg.norm(mean) - 1.5) < 0.15
    other = rng.standard_normal((3000, d))
    assert np.linalg.norm(mean_direction(other, neg)) < 0.3  # no planted difference: nearly no direction


def test_a_probe_finds_a_boundary_planted_in_real_latents(tiny):
    """Label real CALM latents by the side of a random hyperplane: the probe's direction is its normal (the
    mean difference is tilted by the latents' covariance, the probe is not)."""
    ae, _, _, tok, _ = tiny
    ids = torch.randint(5, len(tok), (1500, 8))
    z = activations(ae, ids.numpy(), layer=None)  # (1500 * 4, l)
    rng = np.random.default_rng(1)
    u = rng.standard_normal(z.shape[1])
    u /= np.linalg.norm(u)
    side = z @ u > np.median(z @ u)
    probe = probe_direction(z[side], z[~side], C=10.0)
    assert _cos(probe, u) > 0.9
    assert _cos(mean_direction(z[side], z[~side]), u) > 0.3


def test_attribute_labels_from_text():
    texts = ["I pray thee, sir.", "How do you do?", "HAMLET.\nTo be, or not", "the LORD said unto Moses, Go",
             "thou and your men", "KING HENRY.\nWhat?"]
    source = np.array([1, 1, 1, 0, 1, 1])
    assert attribute_labels(texts, source, "source").tolist() == [0, 0, 0, 1, 0, 0]  # towards KJV
    assert attribute_labels(texts, source, "archaic").tolist() == [1, 0, -1, -1, -1, -1]
    assert attribute_labels(texts, source, "question").tolist() == [0, 1, 0, -1, 0, 1]
    assert attribute_labels(texts, source, "speech").tolist() == [0, 0, 1, -1, 0, 1]  # KJV: outside the contrast
    # the judge: positive vs every other window of the population (neither thee nor you is not archaic)
    assert judge_labels(texts, source, "archaic").tolist() == [1, 0, 0, -1, 0, 0]
    assert judge_labels(texts, source, "source").tolist() == [0, 0, 0, 1, 0, 0]
    with pytest.raises(ValueError, match="unknown attribute"):
        attribute_labels(texts, source, "mood")


def test_the_judge_reads_words_and_generalises_to_new_texts():
    rng = np.random.default_rng(0)
    a, b = ["thee", "thou", "thy", "doth"], ["you", "your", "does", "yes"]
    common = ["the", "king", "said", "and", "come", "here"]

    def texts(words, n):
        return [" ".join(rng.choice(common + [w for w in words], 8)) for _ in range(n)]

    judge = Judge().fit(texts(a, 200) + texts(b, 200), np.r_[np.ones(200), np.zeros(200)].astype(int))
    held = texts(a, 100) + texts(b, 100)
    y = np.r_[np.ones(100), np.zeros(100)].astype(int)
    assert judge.balanced_accuracy(held, y) > 0.9
    with pytest.raises(ValueError, match="both sides"):
        Judge().fit(["a b", "c d"], np.array([1, 1]))


def test_attribute_tokens_are_the_over_represented_ones():
    ids = np.array([[1, 2, 3, 3], [1, 2, 3, 3], [4, 2, 5, 5], [4, 2, 5, 5]] * 5)
    y = np.array([1, 1, 0, 0] * 5)
    top = attribute_tokens(ids, y, vocab_size=8, count=2)
    assert set(top.tolist()) == {1, 3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Randomly initialised tiny K = 2 autoencoder, CALM and token baseline sharing one tokenizer, saved."""
    from calm.autoencoder import Autoencoder, preset
    from calm.baseline import TokenTransformer
    from calm.baseline import preset as token_preset
    from calm.checkpoint import save_pretrained
    from calm.energy_transformer import EnergyTransformer
    from calm.energy_transformer import preset as calm_preset
    from calm.tokenizer import get_tokenizer

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-steering")
    tok = get_tokenizer("bpe:8192")
    ae = Autoencoder(preset("tiny-k2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, latent_dim=8)).eval()
    lm = EnergyTransformer(calm_preset("tiny", ae.config, hidden_size=32, num_layers=2, num_heads=2,
                                       intermediate_size=64, head_intermediate_size=32, max_patches=32),
                           autoencoder=ae).eval()
    with torch.no_grad():  # the zero-initialised output layer would send only the origin: give it weights
        lm.head.out.weight.normal_(std=0.5)
    tm = TokenTransformer(token_preset("tiny", vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2,
                                       intermediate_size=64, max_positions=64)).eval()
    for name, model in (("ae", ae), ("lm", lm), ("tm", tm)):
        save_pretrained(model, root / name, tok)
    return ae, lm, tm, tok, root


def test_interventions_at_zero_change_nothing_and_a_shift_does(tiny):
    ae, lm, tm, tok, _ = tiny
    prompt = torch.randint(5, len(tok), (4, 8))
    plain = lm.generate(prompt, 6, generator=torch.Generator().manual_seed(3))
    mine = calm_generate(lm, prompt, 6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain, mine)  # same noise, same sampler as EnergyTransformer.generate
    big = torch.full((lm.latent_dim,), 50.0)
    shifted = calm_generate(lm, prompt, 6, latent_shift=big, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(shifted, plain)
    before = lm.hidden(prompt)
    with residual_shift(lm.backbone, 0, torch.full((32,), 3.0)):
        assert not torch.allclose(lm.hidden(prompt), before)  # the random head barely reads h: check h itself
    assert torch.equal(lm.hidden(prompt), before)
    assert torch.equal(calm_generate(lm, prompt, 6, generator=torch.Generator().manual_seed(3)), plain)  # unhooked
    with pytest.raises(ValueError, match="block index"), residual_shift(lm.backbone, 5, big):
        pass
    out, z = codec_steer(ae, prompt, torch.zeros(ae.config.latent_dim))
    assert torch.equal(out, ae.reconstruct(prompt)) and z.shape == (4, 4, ae.config.latent_dim)
    base = tm.generate(prompt, 5, generator=torch.Generator().manual_seed(0))
    with logit_bias(tm, np.array([7]), 1e4):
        forced = tm.generate(prompt, 5, generator=torch.Generator().manual_seed(0))
    assert (forced == 7).all() and not (base == 7).all()
    with residual_shift(tm.backbone, 0, torch.zeros(32)):
        assert torch.equal(tm.generate(prompt, 5, generator=torch.Generator().manual_seed(0)), base)


def test_fluency_is_the_token_baselines_loss(tiny):
    _, _, tm, tok, _ = tiny
    ids = torch.randint(5, len(tok), (3, 12))
    with torch.no_grad():
        loss = float(tm(ids).loss)
    assert np.isclose(token_nll(tm, ids[:, :0], ids).mean(), loss, atol=1e-4)
    after = token_nll(tm, ids[:, :8], ids[:, 8:])
    with torch.no_grad():
        logp = torch.log_softmax(tm.logits(ids).float(), -1)
    expected = -logp[:, 7:11].gather(-1, ids[:, 8:, None])[..., 0].mean(1).numpy()
    assert np.allclose(after, expected, atol=1e-5)


def test_reach_interpolates_the_first_crossing():
    from experiments.steering import reach

    r = reach([0, 1, 2, 4], [0.1, 0.3, 0.7, 0.9], [3.0, 3.5, 4.5, 6.0])
    assert np.isclose(r["alpha"], 1.5) and np.isclose(r["nll_cost"], 1.0)
    assert reach([0, 1], [0.1, 0.2], [3, 4]) == {"alpha": None, "nll_cost": None}
    assert reach([0, 1], [0.6, 0.9], [3, 4]) == {"alpha": 0.0, "nll_cost": 0.0}


@pytest.mark.slow
def test_a_run_on_tiny_checkpoints_writes_every_output(tiny, tmp_path):
    from experiments.steering import METHODS, Config, main

    paths = {n: tiny[4] / n for n in ("ae", "lm", "tm")}
    result = main(Config(checkpoint=str(paths["ae"]), lm_checkpoint=str(paths["lm"]),
                         token_lm_checkpoint=str(paths["tm"]), results_dir=str(tmp_path), run_name="s",
                         attributes=("source", "question"), alphas=(0.0, 4.0), example_alphas=(4.0,), prompts=6,
                         tokens=8, direction_windows=60, judge_windows=3000, probe_rows=300))
    run = tmp_path / "s"
    for name in ("rows.csv", "steering.json", "summary.md", "examples.md", "frontier.png", "fidelity.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    rows = pd.read_csv(run / "rows.csv")
    assert len(rows) == 2 * len(METHODS) * 2
    zero = rows[rows["alpha"] == 0]
    assert (zero["overlap"] == 1).all() and np.allclose(zero["chrf"], 1)  # alpha = 0 is the reference
    assert rows["success"].between(0, 1).all() and (rows["success_lo"] <= rows["success"]).all()
    assert rows.loc[rows["level"] == "codec", "on_manifold"].notna().all()
    assert rows.loc[rows["level"] == "generation", "on_manifold"].isna().all()
    saved = json.loads((run / "steering.json").read_text())
    assert {r["method"] for r in saved["reach_50"]} == set(METHODS)
    assert all(0 <= v <= 1 for v in saved["same_noise_other_prompt_overlap"].values())
    assert saved["attributes"]["question"]["prompt_judged_positive"] < 0.5  # prompts are the negative side
    assert "4.0" in saved["examples"]["source"]["outputs"]["token-logit"]
    assert result["command"].startswith("python -m experiments.steering --checkpoint")
    assert "## Where each method reaches 50% judge success" in (run / "summary.md").read_text()


def test_cli_help_and_bad_input(tmp_path, capsys):
    from calm.cli import parse_config
    from experiments.steering import Config

    # --help from the command's own parser, in this process (a command costs a Python start and the model imports);
    # the command itself runs below with bad input, and as a command in tests/test_hostile_studies.py
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Config, ["--help"], prog="python -m experiments.steering")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--checkpoint", "--lm-checkpoint", "--token-lm-checkpoint", "--attributes", "--methods", "--alphas",
                 "--prompts", "--layer"):
        assert flag in out
    bad = subprocess.run([sys.executable, "-m", "experiments.steering", "--checkpoint", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "model.safetensors" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "experiments.steering", "--alphas", "1", "2"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "start with 0" in bad.stderr
