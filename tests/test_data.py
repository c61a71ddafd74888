"""Corpora, splits, token caches and tokenizers (issue 2)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from calm import data
from calm import tokenizer as tk


def test_default_corpus_has_both_sources():
    docs = data.load_documents("kjv+shakespeare")
    names = [d.name for d in docs]
    assert sum(n.startswith("kjv/") for n in names) == 1189  # chapters of the KJV
    assert sum(n.startswith("shakespeare/") for n in names) > 150  # acts and poems
    assert len(set(names)) == len(names)
    assert docs[0].text.startswith("In the beginning God created the heaven and the earth.")


def test_splits_disjoint_and_deterministic():
    first = data.split_documents(data.load_documents("kjv+shakespeare"))
    second = data.split_documents(data.load_documents("kjv+shakespeare"))
    names = {s: [d.name for d in first[s]] for s in data.SPLITS}
    assert names == {s: [d.name for d in second[s]] for s in data.SPLITS}
    train, val, test = (set(names[s]) for s in data.SPLITS)
    assert not (train & val) and not (train & test) and not (val & test)
    total = len(train) + len(val) + len(test)
    assert total == len(data.load_documents("kjv+shakespeare"))
    assert 0.03 < len(val) / total < 0.08 and 0.03 < len(test) / total < 0.08


def test_split_of_a_document_does_not_depend_on_the_others():
    docs = data.load_documents("kjv")
    full = {d.name: s for s, ds in data.split_documents(docs).items() for d in ds}
    half = {d.name: s for s, ds in data.split_documents(docs[::2]).items() for d in ds}
    assert all(full[name] == split for name, split in half.items())


@pytest.mark.parametrize("spec", ["bpe:8192", "gpt2"])
def test_round_trip_on_heldout_lines(spec):
    tok = tk.get_tokenizer(spec)
    lines = [line for d in data.load_split("kjv+shakespeare", "test") for line in d.text.splitlines() if line]
    lines = lines[:1000]
    assert len(lines) == 1000
    ids = tok(lines, add_special_tokens=False)["input_ids"]
    assert [tok.decode(x) for x in ids] == lines


def test_special_ids_and_sizes(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (tk.PAD_ID, tk.EOT_ID)
    assert len(tokenizer) == 8192
    gpt2 = tk.get_tokenizer("gpt2")
    assert len(gpt2) == 50257 and gpt2.eos_token_id == 50256 == gpt2.pad_token_id
    assert gpt2("Hello world")["input_ids"] == [15496, 995]  # GPT-2's well-known ids


def test_bpe_training_is_deterministic(tmp_path, monkeypatch):
    fingerprints = []
    for run in ("a", "b"):
        monkeypatch.setenv("LATENTCOMM_CACHE", str(tmp_path / run))
        fingerprints.append(tk.tokenizer_fingerprint(tk.get_tokenizer("bpe:2048", corpus="kjv")))
    assert fingerprints[0] == fingerprints[1]


def test_token_cache_is_hit(tmp_path, monkeypatch, tokenizer):
    monkeypatch.setenv("LATENTCOMM_CACHE", str(tmp_path))
    path = data.token_cache_path("kjv", tokenizer, "validation")
    assert not path.exists()
    first = data.load_token_ids("kjv", tokenizer, "validation", progress=False)
    assert path.exists()
    # a second load must come from the cache, not from tokenising again
    monkeypatch.setattr(data, "load_split", lambda *a, **k: pytest.fail("tokenised again"))
    second = data.load_token_ids("kjv", tokenizer, "validation", progress=False)
    np.testing.assert_array_equal(first, second)
    assert first.dtype == np.int32
    # every document ends in end-of-text
    n_docs = len(data.split_documents(data.load_documents("kjv"))["validation"])
    assert (first == tk.EOT_ID).sum() == n_docs and first[-1] == tk.EOT_ID


def test_local_text_corpus(tmp_path, tokenizer):
    for i in range(4):
        (tmp_path / f"f{i}.txt").write_text(f"Paragraph one of file {i}.\n\nParagraph two of file {i}.\n")
    docs = data.load_documents(f"text:{tmp_path}/*.txt")
    assert len(docs) == 8 and docs[0].text.startswith("Paragraph one of file 0")
    (tmp_path / "rows.jsonl").write_text('{"text": "first row"}\n{"text": "second row"}\n')
    assert [d.text for d in data.load_documents(f"text:{tmp_path}/rows.jsonl")] == ["first row", "second row"]


def test_local_split_does_not_depend_on_where_the_files_sit(tmp_path):
    for where in ("a", "b/c"):
        folder = tmp_path / where
        folder.mkdir(parents=True)
        for i in range(6):
            (folder / f"f{i}.txt").write_text("".join(f"Paragraph {j} of file {i}.\n\n" for j in range(5)))
    splits = [
        {s: [d.name for d in ds] for s, ds in data.split_documents(data.load_documents(f"text:{tmp_path / w}/*.txt")).items()}
        for w in ("a", "b/c")
    ]
    assert splits[0] == splits[1] and splits[0]["test"]


def test_bad_corpora_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file matches"):
        data.load_documents(f"text:{tmp_path}/missing/*.txt")
    with pytest.raises(ValueError, match="unknown corpus 'bible'"):
        data.load_documents("bible")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        data.load_documents(f"text:{empty}")
    with pytest.raises(ValueError, match="split"):
        data.load_split("kjv", "dev")


@pytest.mark.parametrize("name", ["wikitext103", "pile"])
def test_hub_corpus_offline_fails_fast_with_advice(name):
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match="text:<path>"):
        data.load_documents(name)
    assert time.perf_counter() - t0 < 5


def test_make_passages():
    ids = np.arange(103, dtype=np.int32)
    p = data.make_passages(ids, 8)
    assert p.shape == (12, 8) and p[1, 0] == 8
    sub = data.make_passages(ids, 8, max_passages=5, seed=3)
    assert sub.shape == (5, 8) and np.array_equal(sub, data.make_passages(ids, 8, max_passages=5, seed=3))
    with pytest.raises(ValueError, match="length"):
        data.make_passages(ids, 0)


def test_bad_tokenizer_specs():
    with pytest.raises(ValueError, match="unknown tokenizer spec"):
        tk.get_tokenizer("sentencepiece")
    with pytest.raises(ValueError, match="size"):
        tk.get_tokenizer("bpe:10")
