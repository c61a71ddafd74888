"""experiments.common.probes and experiments.analyze_vectors: labels, probes against planted features, outputs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from calm.corpus import Document
from experiments.common.probes import (
    TOKEN_CLASSES,
    bag_of_ids,
    cap_classes,
    chunk_set,
    effective_rank,
    neighbour_agreement,
    probe,
    split_by_document,
    token_class,
)


def _planted(n: int = 3000, dim: int = 16, classes: int = 3, strength: float = 1.5, seed: int = 0):
    """Latents where a random direction per class is added (``strength`` > 0) or nothing is (0), labels drawn
    independently of the noise, documents of 30 chunks."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    directions = rng.standard_normal((classes, dim))
    x = rng.standard_normal((n, dim)) + strength * directions[y]
    return x, y, np.arange(n) // 30


def test_a_probe_finds_a_planted_feature_and_not_an_absent_one():
    x, y, doc = _planted()
    train, test = split_by_document(doc, seed=0)
    found = probe(x, y, train, test, noise=(0.3, 3.0))
    assert found.majority < 0.4 and found.accuracy > 0.9
    assert found.noisy["0.3"] > 0.85 and found.noisy["3.0"] < found.noisy["0.3"]  # noise erases it gradually
    absent, y_absent, _ = _planted(strength=0.0)
    blind = probe(absent, y_absent, train, test)
    assert blind.accuracy < blind.majority + 0.05  # nothing to find: no better than the majority class
    # the same planted feature on one dimension only: found there, absent in the others
    one = np.random.default_rng(1).standard_normal((len(y), 8))
    one[:, 5] += 3.0 * y
    assert probe(one[:, [5]], y, train, test).accuracy > 0.8
    assert probe(one[:, [0]], y, train, test).accuracy < 0.45


def test_picking_the_regularisation_on_held_out_documents_stops_overfitting():
    rng = np.random.default_rng(0)
    y = np.minimum(rng.geometric(0.15, 3000), 40)  # a skewed many-class label the latents know nothing of
    x, doc = rng.standard_normal((3000, 32)), np.arange(3000) // 30
    train, test = split_by_document(doc, seed=0)
    loose = probe(x, y, train, test)  # C = 1 fits the noise: below the majority class
    picked = probe(x, y, train, test, groups=doc, Cs=(0.001, 0.01, 0.1, 1.0))
    assert loose.accuracy < loose.majority - 0.01
    assert picked.C < 1.0 and picked.accuracy >= picked.majority - 0.01


def test_split_keeps_documents_whole_and_the_strata_balanced():
    rng = np.random.default_rng(0)
    doc = np.repeat(np.arange(40), rng.integers(5, 60, 40))
    source = (doc % 4 == 0).astype(int)  # a quarter of the documents are the other source
    train, test = split_by_document(doc, strata=source, test_fraction=0.3, seed=0)
    assert not (train & test).any() and (train | test).all()
    assert not set(doc[train]) & set(doc[test])
    assert abs(source[train].mean() - source[test].mean()) < 0.1
    assert 0.15 < test.mean() < 0.45
    with pytest.raises(ValueError, match="two documents"):
        split_by_document(np.zeros(10, int))


def test_labels_of_chunks():
    class Tok:
        """A character tokenizer: id = ord(c) (no merges, so labels are easy to check)."""

        def __len__(self):
            return 128

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

        def decode(self, ids):
            return "".join(chr(i) for i in ids)

    docs = [Document("kjv/Genesis/1", "In the\nbeginning"), Document("shakespeare/hamlet/1", "To be, or not")]
    cs = chunk_set(docs, Tok(), 2)
    # "In", " t", "he", "\nb", "eg", "in", "ni", "ng" | "To", " b", "e,", " o", "r ", "no" (the last "t" dropped)
    assert cs.ids.shape == (8 + 6, 2) and cs.docs == ["kjv/Genesis/1", "shakespeare/hamlet/1"]
    assert cs.source.tolist() == [0] * 8 + [1] * 6
    assert cs.next_first[:8].tolist() == [ord(c) for c in " h\neinn"] + [-1]
    # tokens since the last newline at each chunk's start: 0, 2, 4, 6, then 1 ("b" follows "\n"), 3, 5, 7
    assert cs.position[:8].tolist() == [0, 1, 1, 2, 1, 1, 2, 2]
    assert cs.subset(np.array([0, 8])).ids.tolist() == [[73, 110], [84, 111]]


def test_token_classes_and_helpers():
    assert [TOKEN_CLASSES[token_class(p)] for p in ("The", " Lord", ",", ".\n", "12", " the", "ing", "\n")] == [
        "capitalised", "capitalised", "punctuation", "punctuation", "digit", "whitespace-led", "other", "punctuation"]
    y = np.array([1, 1, 1, 2, 2, 3, 4, 5])
    capped = cap_classes(y, np.ones(8, bool), 3)
    assert capped.tolist() == [1, 1, 1, 2, 2, -2, -2, -2]
    bag = bag_of_ids(np.array([[3, 3, 1], [0, 2, 1]]), 5).toarray()
    assert bag.tolist() == [[0, 1, 0, 2, 0], [1, 1, 1, 0, 0]]
    rng = np.random.default_rng(0)
    assert effective_rank(rng.standard_normal((5000, 8))) > 7.8
    line = np.outer(rng.standard_normal(500), np.ones(8)) + 1e-6 * rng.standard_normal((500, 8))
    assert effective_rank(line) < 1.1
    x = np.concatenate([rng.normal(0, 0.1, (200, 4)), rng.normal(5, 0.1, (200, 4))])
    labels = np.repeat([0, 1], 200)
    near, rand = neighbour_agreement(x, {"cluster": labels}, queries=50)["cluster"]
    assert near == 1.0 and 0.3 < rand < 0.7


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, tokenizer, train_ids):
    """A K = 2 autoencoder trained for a few steps: the analysis must run on any checkpoint."""
    from calm.autoencoder import preset
    from calm.checkpoint import save_pretrained
    from calm.tasks import train_autoencoder
    from calm.tokenizer import special_ids

    cfg = preset("tiny", K=2, latent_dim=16, hidden_size=32, intermediate_size=64, vocab_size=len(tokenizer),
                 pad_id=special_ids(tokenizer)[0])
    model = train_autoencoder(cfg, train_ids, steps=30, batch_size=64)
    path = tmp_path_factory.mktemp("vectors") / "ae"
    save_pretrained(model, path, tokenizer)
    return path


@pytest.mark.slow
def test_analysis_writes_its_outputs(tiny_checkpoint, tmp_path):
    from experiments.analyze_vectors import Config, main

    # the smallest analysis that still draws every output: the probes (most of the run) on 500 chunks, each picking
    # its C from two values (tests above check the pick itself); the UMAP picture is mostly numba's compilation
    result = main(Config(checkpoint=str(tiny_checkpoint), results_dir=str(tmp_path), run_name="v", max_chunks=500,
                         umap_points=200, max_classes=16, probe_cs=(0.1, 1.0)))
    run = tmp_path / "v"
    for name in ("summary.md", "probes.csv", "analysis.json", "dimensions.png", "manifold.png"):
        assert (run / name).is_file() and (run / name).stat().st_size > 0, name
    probes = pd.read_csv(run / "probes.csv")
    expected = {"token id @0", "token id @1", "token class @0", "token class @1", "source", "position in line",
                "next chunk's first token"}
    assert set(probes["feature"]) == expected
    assert probes[["majority", "bag_of_ids", "probe", "probe_sigma_0.3", "probe_sigma_1.0"]].apply(
        lambda c: c.between(0, 1)).all().all()
    saved = json.loads((run / "analysis.json").read_text())
    assert saved["K"] == 2 and len(saved["kl_per_dim"]) == 16 and 1 <= saved["effective_rank"] <= 16
    assert len(saved["interpolation"][0]["rows"]) == 11 and saved["nearest_neighbours"]
    assert 0 <= saved["top_dimension"]["dim"] < 16 and result["command"].endswith(str(tiny_checkpoint))
    text = (run / "summary.md").read_text()
    assert "## Probes" in text and "dimensions.png" in text and "Interpolation" in text


def test_cli_help_and_bad_input(tmp_path, capsys):
    from calm.cli import parse_config
    from experiments.analyze_vectors import Config

    # --help from the command's own parser, in this process (a command costs a Python start and the model imports);
    # the command itself runs below with bad input, and as a command in tests/test_hostile_studies.py
    with pytest.raises(SystemExit) as exit_info:
        parse_config(Config, ["--help"], prog="python -m experiments.analyze_vectors")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--checkpoint", "--k", "--max-chunks", "--noise-sigmas", "--umap-points"):
        assert flag in out
    bad = subprocess.run([sys.executable, "-m", "experiments.analyze_vectors", "--checkpoint", str(tmp_path)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "model.safetensors" in bad.stderr
