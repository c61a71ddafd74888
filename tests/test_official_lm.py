"""The experiments that use a CALM language model run end to end on the released CALM (the official code's layout,
converted by ``calm.convert``): the latent dialogue, steering, the LM-prior listener (reconstruction's
vector-prior / vector-snap / uncoded-tokens-prior), the SAE comparison, and analyze_vectors on its autoencoder,
each with the smallest settings on a ``text:`` corpus its tokenizer encodes.

The models are ``tests/conftest.py``'s ``official_checkpoints`` (vocabulary 303 with pad id 302, K = 4, l = 16,
width 32, no start vector, the mlp-glu head): randomly initialised, so what a run measures is noise; the
assertions check that the run is made of *these* weights (checkpoint ids, results recomputed from the converted
files) and, where the layout matters, that the released CALM is read with its own alignment: its first patch
comes off a zero input vector, patch t + 1 off patch t's position, and ``hidden``'s h[:, t] predicts patch t.
The token baseline steering and the token-prior listener need is a random tiny one on the released tokenizer
(without one, ``ensure_token_lm`` would train one on the checkpoint's tokenizer).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.ray  # the dialogue and reconstruction serve their trials with Ray agents

V, K, ELL, D, PAD = 303, 4, 16, 32, 302
TOKEN_BITS = 9  # ceil(log2 303); 17 for the released 128,257 ids


@pytest.fixture(scope="module")
def released(official_checkpoints, tmp_path_factory):
    """The converted autoencoder and CALM (directories and loaded models), the corpus, their checkpoint ids and a
    random tiny token baseline saved with the released tokenizer."""
    from calm.baseline import TokenTransformer
    from calm.baseline import preset as token_preset
    from calm.checkpoint import load_pretrained, save_pretrained
    from experiments.common.models import checkpoint_id

    root = tmp_path_factory.mktemp("official-lm")
    ae_dir, lm_dir = (official_checkpoints[k].resolve() for k in ("autoencoder", "calm"))
    ae, tok = load_pretrained(ae_dir, expect="autoencoder")
    lm, _ = load_pretrained(lm_dir, expect="calm")
    torch.manual_seed(0)
    tm = TokenTransformer(token_preset("tiny", vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2,
                                       intermediate_size=64, max_positions=64))
    save_pretrained(tm, root / "tm", tok)
    assert (len(tok), tok.pad_token_id, lm.config.start_vector, lm.start) == (V, PAD, False, None)
    return SimpleNamespace(ae_dir=ae_dir, lm_dir=lm_dir, tm_dir=root / "tm", ae=ae.eval(), lm=lm.eval(), tok=tok,
                           corpus=official_checkpoints["corpus"], root=root, ae_id=checkpoint_id(ae_dir),
                           lm_id=checkpoint_id(lm_dir))


def _finite_in(values, low: float, high: float) -> None:
    values = np.asarray(values, dtype=float)
    assert np.isfinite(values).all() and ((values >= low) & (values <= high)).all(), values


# ---------------------------------------------------------------------------------------------------------
# the latent dialogue


def test_dialogue_runs_on_the_released_calm_and_generates_in_its_layout(ray_session, released):
    from agents import CALMAgentCore
    from calm.data import load_token_ids, make_passages
    from experiments.dialogue import Config, _seed, lm_config_of, main

    cfg = Config(checkpoint=str(released.ae_dir), lm_checkpoint=str(released.lm_dir), corpus=released.corpus,
                 results_dir=str(released.root / "results"), runs_dir=str(released.root / "runs"), run_name="dialogue",
                 sigmas=(0.0, 1.0), episodes=2, turns=2, chunks_per_message=2, prompt_tokens=8, fit_prompts=4,
                 num_passages=20, max_concurrent=1)
    result = main(cfg)
    assert result.failed == [] and result.rows == result.total == 4
    frame = pd.read_csv(result.run_dir / "results.csv")
    record = json.loads((result.run_dir / "config.json").read_text())
    # the run is the released CALM's: its weights name the run and every row; the autoencoder is recorded
    assert (frame.checkpoint == released.lm_id).all() and record["checkpoint_id"] == released.lm_id
    assert record["lm_checkpoint"] == str(released.lm_dir) and record["autoencoder_id"] == released.ae_id
    for m in ("token_accuracy", "token_accuracy_ci_low", "token_accuracy_ci_high", "message_exact"):
        _finite_in(frame[m], 0.0, 1.0)
    rows = frame.set_index(["protocol", "sigma"])
    assert rows.loc[("latent", 0.0), "token_accuracy"] == rows.loc[("tokens", 0.0), "token_accuracy"] == 1.0
    assert rows.loc[("latent", 0.0), "channel_uses"] == 2 * ELL  # 2 chunks x l
    assert rows.loc[("tokens", 0.0), "channel_uses"] == 2 * K * TOKEN_BITS  # 8 ids of the 303-id vocabulary
    assert (frame.flops_sender > 0).all() and np.isfinite(frame.latent_power).all()
    assert (result.run_dir / "transcripts.md").is_file() and (result.run_dir / "summary.md").is_file()

    # the first message, recomputed from the converted files in the released layout (no start vector): the state
    # after the prompt is hidden's h[:, P0] (it has read the prompt's P0 patches), one head sample per chunk
    assert lm_config_of(released.lm_dir).start_vector is False
    lm, tok = released.lm, released.tok
    prompts = make_passages(load_token_ids(cfg.corpus, tok, "test", progress=False), cfg.prompt_tokens,
                            max_passages=cfg.num_passages, seed=cfg.ae_seed + 1)
    first = np.random.default_rng(_seed(0, 5)).choice(len(prompts), cfg.episodes, replace=False)[0]
    prompt = torch.as_tensor(np.asarray(prompts[first], dtype=np.int64))[None]  # (1, 8): two patches
    gen = torch.Generator().manual_seed(_seed(0, 0, 0, 1))
    ids = prompt
    with torch.no_grad():
        for _ in range(cfg.chunks_per_message):
            h = lm.hidden(torch.cat([ids, torch.zeros(1, K, dtype=torch.long)], dim=1))[:, -1]  # predicts the next
            ids = torch.cat([ids, lm.decode_chunks(lm.head.sample(h, 1, generator=gen)[:, 0])], dim=1)
    message = ids[0, prompt.shape[1]:].numpy()
    agent = CALMAgentCore(str(released.ae_dir), {}, lm_checkpoint=str(released.lm_dir))
    z, sent = agent.dialogue_generate(prompts[first], cfg.chunks_per_message, _seed(0, 0, 0, 1))
    np.testing.assert_array_equal(sent, message)
    assert z.shape == (cfg.chunks_per_message, ELL)
    transcript = json.loads(rows.loc[("latent", 1.0), "transcript"])
    assert transcript[0]["sent"] == tok.decode(prompts[first].tolist())
    assert transcript[1]["sender"] == "A" and transcript[1]["sent"] == tok.decode(message.tolist())


# ---------------------------------------------------------------------------------------------------------
# steering


def test_steering_runs_on_the_released_calm_with_its_hidden_states(released):
    from experiments.steering import METHODS, Config, main
    from experiments.steering_methods import activations

    base = dict(checkpoint=str(released.ae_dir), lm_checkpoint=str(released.lm_dir),
                token_lm_checkpoint=str(released.tm_dir), corpus=released.corpus,
                results_dir=str(released.root / "results"), runs_dir=str(released.root / "runs"), plots=False)
    # a text: corpus has no KJV / Shakespeare names: the source contrast is refused before a run directory opens
    with pytest.raises(ValueError, match="'source' cannot be steered"):
        main(Config(**base, run_name="refused", attributes=("source",), alphas=(0.0, 4.0), prompts=6, tokens=8,
                    direction_windows=60, judge_windows=3000, probe_rows=300))
    assert not (released.root / "results" / "refused").exists()
    result = main(Config(**base, run_name="steering", attributes=("question", "archaic"), alphas=(0.0, 4.0),
                         prompts=6, tokens=8, direction_windows=60, judge_windows=3000, probe_rows=300))
    run = released.root / "results" / "steering"
    for name in ("rows.csv", "steering.json", "summary.md", "examples.md"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    rows = pd.read_csv(run / "rows.csv")
    assert len(rows) == 2 * len(METHODS) * 2
    for m in ("success", "success_lo", "success_hi", "overlap", "chrf"):
        _finite_in(rows[m], 0.0, 1.0)
    assert np.isfinite(rows.nll).all() and (rows.nll > 0).all()
    assert (rows[rows.alpha == 0].overlap == 1).all()  # alpha = 0 is the reference
    _finite_in(rows.loc[rows.level == "codec", "on_manifold"], 0.0, 1.0)
    # the released CALM and autoencoder are the run's: their ids name it, the paths are recorded
    owner = json.loads((run / "run.json").read_text())["checkpoint_id"]
    assert owner.startswith(f"{released.ae_id} + {released.lm_id} + ")
    assert result["lm_checkpoint"] == str(released.lm_dir) and result["checkpoint"] == str(released.ae_dir)
    assert "--corpus text:" in result["command"] and "--attributes question archaic" in result["command"]
    # the hidden direction is fitted on the released CALM's states: one row per patch, where hidden's h[:, t] is
    # computed (h[:, 0] in the zero-input pass of its own); taking the first pass alone gave a zero direction
    for attribute in ("question", "archaic"):
        norms = result["attributes"][attribute]["direction_norm"]
        assert norms["hidden-mean"] > 1e-3 and norms["latent-mean"] > 1e-3, norms
    lm = released.lm
    ids = torch.randint(0, V - 3, (3, 12), generator=torch.Generator().manual_seed(0))
    last = activations(lm, ids.numpy(), layer=len(lm.backbone.layers) - 1)  # (3 * 3, d)
    with torch.no_grad():
        h = lm.hidden(ids)  # (3, 3, d)
        assert last.shape == (9, D)
        torch.testing.assert_close(lm.backbone.norm(torch.as_tensor(last, dtype=torch.float32)).view(3, 3, D), h)


# ---------------------------------------------------------------------------------------------------------
# the LM-prior listener


def test_the_lm_prior_listeners_run_on_the_released_calm(ray_session, released):
    from experiments.reconstruction import Config, main

    cfg = Config(checkpoint=str(released.ae_dir), lm_checkpoint=str(released.lm_dir),
                 token_lm_checkpoint=str(released.tm_dir), corpus=released.corpus,
                 results_dir=str(released.root / "results"), runs_dir=str(released.root / "runs"),
                 run_name="prior", plots=False, passage_length=8, rhos=(4.0,), channels=("awgn",), sigmas=(0.0, 1.0),
                 seeds=(0,), protocols=("vector", "vector-prior", "vector-snap", "uncoded-tokens",
                                        "uncoded-tokens-prior"),
                 episodes=16, batch_size=16, num_passages=64, fit_passages=128, prior_samples=8, max_concurrent=1)
    result = main(cfg)
    assert result.failed == [] and result.rows == result.total == 10
    frame = pd.read_csv(result.run_dir / "results.csv")
    record = json.loads((result.run_dir / "config.json").read_text())
    assert record["lm_checkpoint"] == str(released.lm_dir) and record["token_lm_checkpoint"] == str(released.tm_dir)
    assert (frame.checkpoint == released.ae_id).all()
    for m in ("token_accuracy", "chunk_exact", "passage_exact"):
        _finite_in(frame[m], 0.0, 1.0)
    acc = frame.set_index(["protocol", "sigma"]).token_accuracy
    # no noise: each listener returns its plain decoding (n = 32 = D: the vector code needs no PCA; 32 channel
    # uses carry 3 of the 8 ids at 9 bits each)
    assert acc[("vector-prior", 0.0)] == acc[("vector-snap", 0.0)] == acc[("vector", 0.0)]
    assert acc[("uncoded-tokens-prior", 0.0)] == acc[("uncoded-tokens", 0.0)] > 0.3


def test_the_prior_reads_the_released_calm_with_its_alignment(released):
    """The prior's candidates for chunk c are head samples at the state that has read exactly the chunks < c:
    for the released layout, the zero-input state at c = 0, then the backbone's output at chunk c - 1."""
    import environments
    from protocols import make_protocol
    from protocols.prior import lm_prior_decode

    lm, ae = released.lm, released.ae
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V - 3, size=(40, 12))  # 3 chunks
    p = make_protocol("vector", ae, budget=3 * ELL).fit(ids[:32])
    x = p.encode(ids[32:])
    y = (x + 0.5 * rng.standard_normal(x.shape)).astype(np.float32)
    seen: list[torch.Tensor] = []
    sample = lm.head.sample
    lm.head.sample = lambda h, n, generator=None: (seen.append(h.clone()), sample(h, n, generator=generator))[1]
    try:
        out, _ = lm_prior_decode(p, lm, y, environments.AWGN(0.5), samples=4, rule="snap", seed=1)
    finally:
        del lm.head.sample
    assert len(seen) == 3 and out.shape == (8, 12)
    with torch.no_grad():
        start = lm.backbone(torch.zeros(1, 1, D))[0, 0]
        torch.testing.assert_close(seen[0], start.expand(8, -1))
        for c in (1, 2):  # the snapped prefix is the listener's output so far
            prefix = torch.as_tensor(out[:, : c * K])
            torch.testing.assert_close(seen[c], lm.backbone(lm.patch_inputs(prefix))[:, -1])


# ---------------------------------------------------------------------------------------------------------
# the SAE comparison and analyze_vectors


def test_compare_sae_runs_on_the_released_calm(released):
    from experiments.compare_sae import Config, activations, main

    result = main(Config(checkpoint=str(released.ae_dir), lm_checkpoint=str(released.lm_dir), corpus=released.corpus,
                         results_dir=str(released.root / "results"), runs_dir=str(released.root / "runs"),
                         run_name="sae", train_chunks=300, test_chunks=200, window=8, expansions=(2,), ks=(2,),
                         steps=20, max_classes=8, top_n=10, control=False, plots=False))
    table = pd.read_csv(released.root / "results" / "sae" / "sae.csv")
    assert sorted(zip(table.source, table.d_in)) == [("hidden", D), ("latent", ELL)]
    assert (table.fve_test <= 1).all() and (table.l0_test <= 2 + 1e-9).all()
    assert result["lm_checkpoint"] == str(released.lm_dir) and result["K"] == K
    # a hidden row t >= 1 is the released backbone's output at patch t - 1 (the last patch it has read)
    windows = np.random.default_rng(0).integers(0, V - 3, size=(2, 5, K))
    got = activations(released.ae, released.lm, windows, ("hidden",))["hidden"]
    with torch.no_grad():
        lm = released.lm
        want = lm.backbone(lm.patch_inputs(torch.as_tensor(windows.reshape(2, 5 * K))))[:, :-1]
    np.testing.assert_allclose(got, want.reshape(-1, D).numpy(), rtol=1e-5, atol=1e-6)


def test_analyze_vectors_runs_on_the_released_autoencoder(released):
    from experiments.analyze_vectors import Config, encode_chunks, main

    result = main(Config(checkpoint=str(released.ae_dir), corpus=released.corpus,
                         results_dir=str(released.root / "results"), run_name="vectors", max_chunks=400,
                         max_classes=16, probe_cs=(1.0,), noise_sigmas=(0.3,), plots=False))
    run = released.root / "results" / "vectors"
    for name in ("summary.md", "probes.csv", "analysis.json"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    assert json.loads((run / "run.json").read_text())["checkpoint_id"] == released.ae_id
    probes = pd.read_csv(run / "probes.csv")
    # one source (a text: corpus): no source label; every other probe is scored against its baselines
    assert set(probes.feature) == {*(f"token {w} @{j}" for w in ("id", "class") for j in range(K)),
                                   "position in line", "next chunk's first token"}
    for c in ("majority", "bag_of_ids", "probe", "probe_sigma_0.3"):
        _finite_in(probes[c], 0.0, 1.0)
    assert (result["K"], result["latent_dim"], len(result["kl_per_dim"])) == (K, ELL, ELL)
    assert 1 <= result["effective_rank"] <= ELL and np.isfinite(result["kl_total"])
    assert result["interpolation"] and len(result["interpolation"][0]["rows"]) == 11
    assert "--corpus text:" in result["command"]
    # the chunks are the corpus's text in the released tokenizer, without its BOS or pad
    texts = [q["query"] for q in result["nearest_neighbours"]]
    assert texts and all("<|begin_of_text|>" not in t and "[PAD]" not in t for t in texts)
    ids = torch.randint(0, V - 3, (5, K), generator=torch.Generator().manual_seed(0)).numpy()
    mu, _ = encode_chunks(released.ae, ids)
    with torch.no_grad():
        np.testing.assert_allclose(mu, released.ae.encode(torch.as_tensor(ids))[0].reshape(5, ELL).double().numpy())
