"""protocols.meaning: planted, random and holistic languages, hand-computed distances and bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from protocols.meaning import (
    DISTANCE_NAMES,
    bosdis,
    edit_distance,
    pairwise_distances,
    posdis,
    topographic_similarity,
)


def _compositional(values: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """2 attributes x `values` values; message = (bijection of a0, bijection of a1), disjoint symbol sets."""
    attrs = np.array(list(itertools.product(range(values), repeat=2)))  # (25, 2)
    rng = np.random.default_rng(1)
    first, second = rng.permutation(values), values + rng.permutation(values)
    return attrs, np.stack([first[attrs[:, 0]], second[attrs[:, 1]]], axis=1)


def _levenshtein(a: list[int], b: list[int]) -> int:
    """Textbook two-row DP, the reference for the vectorised one."""
    prev = list(range(len(b) + 1))
    for r, x in enumerate(a, 1):
        cur = [r]
        for c, y in enumerate(b, 1):
            cur.append(min(prev[c] + 1, cur[c - 1] + 1, prev[c - 1] + (x != y)))
        prev = cur
    return prev[-1]


# ---------------------------------------------------------------- languages


def test_compositional_language_scores_one():
    attrs, msgs = _compositional()
    assert topographic_similarity(attrs, msgs, "hamming", "hamming") > 0.95
    assert topographic_similarity(attrs, msgs, "hamming", "edit") > 0.95
    assert posdis(attrs, msgs) > 0.95
    # disjoint symbol sets per position: each symbol's count names one attribute value
    assert bosdis(attrs, msgs) > 0.95
    # the order of positions is irrelevant to all three
    assert posdis(attrs, msgs[:, ::-1]) == pytest.approx(posdis(attrs, msgs))


def test_random_language_scores_about_zero():
    rng = np.random.default_rng(0)
    attrs, msgs = rng.integers(0, 5, (2000, 2)), rng.integers(0, 10, (2000, 2))
    for message_distance in ("hamming", "edit"):
        rho = topographic_similarity(attrs, msgs, "hamming", message_distance, max_pairs=20_000, rng=1)
        assert abs(rho) < 0.05
    assert abs(posdis(attrs, msgs)) < 0.05
    assert abs(bosdis(attrs, msgs)) < 0.05


def test_holistic_language_is_unambiguous_but_not_topographic():
    # 4 attributes x 4 values; each meaning gets the compositional message of another meaning (a random
    # bijection), so all 256 messages are distinct but the structure is gone
    attrs = np.array(list(itertools.product(range(4), repeat=4)))
    msgs = attrs[np.random.default_rng(3).permutation(len(attrs))]
    assert len({tuple(m) for m in msgs}) == len(attrs)
    assert topographic_similarity(attrs, attrs, "hamming", "hamming") == pytest.approx(1.0)
    assert abs(topographic_similarity(attrs, msgs, "hamming", "hamming")) < 0.1
    assert abs(topographic_similarity(attrs, msgs, "hamming", "edit")) < 0.1
    assert posdis(attrs, msgs) < 0.1


def test_single_symbol_holistic_language_has_constant_message_distance():
    # one symbol per meaning: every pair of messages is at hamming distance 1, so rho is undefined
    attrs, _ = _compositional()
    msgs = np.random.default_rng(0).permutation(len(attrs))[:, None]
    with np.errstate(all="raise"):
        assert math.isnan(topographic_similarity(attrs, msgs, "hamming", "hamming"))
    assert math.isnan(topographic_similarity(attrs, np.zeros((25, 3)), "hamming", "euclidean"))


# ---------------------------------------------------------------- posdis and bosdis known values


def test_posdis_known_values():
    attrs, msgs = _compositional()
    # a constant position has H = 0 and is skipped, not averaged in as 0
    with_constant = np.concatenate([msgs, np.full((25, 1), 7)], axis=1)
    assert posdis(attrs, with_constant) == pytest.approx(1.0)
    # a position naming both attributes at once: I(s; a0) = I(s; a1) = log2 5, gap 0
    entangled = (attrs[:, 0] * 5 + attrs[:, 1])[:, None]
    assert posdis(attrs, entangled) == pytest.approx(0.0, abs=1e-12)
    # one clean position and one entangled: the mean of 1 and 0
    assert posdis(attrs, np.concatenate([msgs[:, :1], entangled], axis=1)) == pytest.approx(0.5)
    # nothing varies: 0, not nan
    assert posdis(attrs, np.zeros((25, 2), dtype=int)) == 0.0


def test_bosdis_ignores_order_but_posdis_needs_it():
    attrs, msgs = _compositional()
    # each message's two symbols in a random order: the bag is the same, the positions are scrambled
    flip = np.random.default_rng(5).random(25) < 0.5
    shuffled = np.where(flip[:, None], msgs[:, ::-1], msgs)
    assert bosdis(attrs, shuffled) == pytest.approx(bosdis(attrs, msgs))
    assert posdis(attrs, shuffled) < 0.5
    # a larger vocabulary only adds never-sent symbols, which are skipped
    assert bosdis(attrs, msgs, vocab_size=50) == pytest.approx(bosdis(attrs, msgs))


# ---------------------------------------------------------------- distances


def test_edit_distance_hand_cases():
    kitten, sitting = [10, 8, 19, 19, 4, 13], [18, 8, 19, 19, 8, 13, 6]  # letters as integers
    assert edit_distance(kitten, sitting) == 3
    assert edit_distance(sitting, kitten) == 3
    assert edit_distance([], []) == 0
    assert edit_distance([], [1, 2, 3]) == 3
    assert edit_distance([4, 5], []) == 2
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0
    assert edit_distance([1, 2, 3], [3, 2, 1]) == 2
    assert edit_distance(np.array([1, 2, 3, 4]), np.array([2, 3, 4, 5])) == 2


def test_pairwise_edit_matches_reference_on_ragged_sequences():
    rng = np.random.default_rng(2)
    seqs = [list(rng.integers(0, 3, rng.integers(0, 8))) for _ in range(40)]
    d = pairwise_distances(seqs, "edit")
    i, j = np.triu_indices(len(seqs), 1)
    assert d.shape == (len(i),)
    assert d.tolist() == [_levenshtein(seqs[a], seqs[b]) for a, b in zip(i, j, strict=True)]


def test_vector_distances_match_scipy_and_callables():
    rng = np.random.default_rng(0)
    x, codes = rng.normal(size=(30, 6)), rng.integers(0, 3, (30, 5))
    for name in ("cosine", "euclidean"):
        np.testing.assert_allclose(pairwise_distances(x, name), pdist(x, name), atol=1e-12)
    np.testing.assert_allclose(pairwise_distances(codes, "hamming"), pdist(codes, "hamming"))
    # a callable is used as given, pair by pair, in the same order
    euclid = pairwise_distances(x, lambda a, b: float(np.linalg.norm(a - b)))
    np.testing.assert_allclose(euclid, pdist(x, "euclidean"))
    assert topographic_similarity(x, codes, lambda a, b: float(np.linalg.norm(a - b)), "hamming") == (
        pytest.approx(topographic_similarity(x, codes, "euclidean", "hamming")))


def test_cosine_topsim_rotation_invariant_and_noise_zero():
    rng = np.random.default_rng(0)
    meanings = rng.normal(size=(200, 16))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert topographic_similarity(meanings, meanings @ rotation, "cosine", "cosine") > 0.9999
    noise = rng.normal(size=(200, 16))
    assert abs(topographic_similarity(meanings, noise, "cosine", "cosine")) < 0.05


def test_max_pairs_subset_is_seeded_and_close_to_all_pairs():
    rng = np.random.default_rng(4)
    meanings = rng.normal(size=(300, 8))
    messages = meanings + 0.5 * rng.normal(size=(300, 8))
    full = topographic_similarity(meanings, messages, "euclidean", "euclidean")
    a = topographic_similarity(meanings, messages, "euclidean", "euclidean", max_pairs=5000, rng=7)
    b = topographic_similarity(meanings, messages, "euclidean", "euclidean", max_pairs=5000,
                               rng=np.random.default_rng(7))
    assert a == b
    assert a == pytest.approx(full, abs=0.03)
    # at least as many pairs as exist: all of them
    assert topographic_similarity(meanings[:10], messages[:10], "euclidean", "euclidean", max_pairs=1000) == (
        pytest.approx(topographic_similarity(meanings[:10], messages[:10], "euclidean", "euclidean")))


# ---------------------------------------------------------------- bad input


def test_bad_input_raises():
    attrs, msgs = _compositional()
    with pytest.raises(ValueError, match="one length"):
        topographic_similarity(attrs, msgs[:-1], "hamming", "hamming")
    with pytest.raises(ValueError, match="at least 2"):
        topographic_similarity(attrs[:1], msgs[:1], "hamming", "hamming")
    with pytest.raises(ValueError, match="unknown message_distance 'levenshtein'"):
        topographic_similarity(attrs, msgs, "hamming", "levenshtein")
    with pytest.raises(ValueError, match="unknown distance"):
        pairwise_distances(attrs, "manhattan")
    with pytest.raises(ValueError, match="zero vectors"):
        pairwise_distances(np.zeros((3, 2)), "cosine")
    with pytest.raises(ValueError, match="equal-length"):
        pairwise_distances([[1, 2], [1]], "hamming")
    with pytest.raises(ValueError, match="one length"):
        posdis(attrs, msgs[:-1])
    with pytest.raises(ValueError, match="2 attributes"):
        posdis(attrs[:, :1], msgs)
    with pytest.raises(ValueError, match="integers"):
        bosdis(attrs, msgs + 0.5)
    with pytest.raises(ValueError, match="vocab_size"):
        bosdis(attrs, msgs, vocab_size=5)
    assert set(DISTANCE_NAMES) == {"cosine", "euclidean", "edit", "hamming"}
