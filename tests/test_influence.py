"""protocols.influence: message controls and causal influence on toy listeners of known message use."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protocols.influence import (
    causal_influence,
    control_intervals,
    control_success,
    from_other_task,
    gaussian_matched,
    haar_orthogonal,
    random_rotation,
    shuffled,
    uniform_symbols,
    zeroed,
)

# B games, C candidates, N channel symbols, P passages in the toy corpus
B, C, N, P = 2000, 8, 16, 1024


def _one_hot(idx: np.ndarray, c: int = C) -> np.ndarray:
    return np.eye(c)[np.clip(idx, 0, c - 1)]


def _game(seed: int) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Unit-norm passage codes; each game shows C distinct passages, the message is the target's code."""
    rng = np.random.default_rng(seed)
    book = rng.standard_normal((P, N))
    book /= np.linalg.norm(book, axis=1, keepdims=True)
    passages = np.argsort(rng.random((B, P)), axis=1)[:, :C]  # (B, C) distinct per game
    targets = rng.integers(0, C, size=B)
    codes = book[passages]  # (B, C, N)
    messages = codes[np.arange(B), targets]  # (B, N)
    return messages, {"codes": codes, "prior": rng.dirichlet(np.ones(C), size=B)}, targets


def nearest_listener(messages: np.ndarray, context: dict[str, np.ndarray]) -> np.ndarray:
    # unit-norm codes: the largest dot product is the nearest candidate; a deterministic choice
    return _one_hot(np.argmax(np.einsum("bn,bcn->bc", messages, context["codes"]), axis=1))


def deaf_listener(messages: np.ndarray, context: dict[str, np.ndarray]) -> np.ndarray:
    # reads the context only: its choices cannot depend on the message
    return context["prior"]


def expected_hard_cic(k: int, q: float) -> float:
    """E log2((K+1) / (1 + X)), X ~ Bin(K, q): the estimate for a perfect deterministic listener whose
    intervened choices hit the target independently with probability q."""
    return sum(math.comb(k, x) * q**x * (1 - q) ** (k - x) * math.log2((k + 1) / (1 + x)) for x in range(k + 1))


def test_deaf_listener_has_no_influence_and_controls_change_nothing():
    messages, context, targets = _game(0)
    cic = causal_influence(deaf_listener, messages, context, rng=np.random.default_rng(1))
    assert abs(cic) < 1e-9
    other = np.random.default_rng(2).standard_normal((50, N))
    rates = control_success(deaf_listener, messages, context, targets, rng=np.random.default_rng(3),
                            other_messages=other)
    assert set(rates) == {"real", "shuffled", "rotation", "gaussian", "zeroed", "other_task", "chance"}
    assert rates["chance"] == pytest.approx(1 / C)
    assert all(rates[name] == rates["real"] for name in rates if name != "chance")

    # discrete messages: no rotation or gaussian, uniform symbols once the vocabulary is known
    symbols = np.random.default_rng(4).integers(0, 5, size=(B, 3))
    rates = control_success(deaf_listener, symbols, context, targets, rng=np.random.default_rng(5),
                            other_messages=symbols[:10], vocab_size=5)
    assert set(rates) == {"real", "shuffled", "zeroed", "other_task", "uniform_symbols", "chance"}
    assert all(rates[name] == rates["real"] for name in rates if name != "chance")
    assert causal_influence(deaf_listener, symbols, context, rng=np.random.default_rng(6)) < 1e-9


def test_perfect_listener_has_high_influence_and_fails_every_control():
    messages, context, targets = _game(1)
    k = 64
    cic = causal_influence(nearest_listener, messages, context, rng=np.random.default_rng(0), interventions=k)
    # another game's message lands on a random candidate: q = 1/C (the hit rate varies a little from game to
    # game with the codes' geometry, which lifts the mean slightly above the binomial value)
    assert cic == pytest.approx(expected_hard_cic(k, 1 / C), abs=0.1)
    assert 0.8 * math.log2(C) < cic <= math.log2(k + 1)
    # the default K = 16 caps the estimate lower (log2 17), still well above 0
    assert 2.0 < causal_influence(nearest_listener, messages, context, rng=np.random.default_rng(0)) < cic

    rates = control_success(nearest_listener, messages, context, targets, rng=np.random.default_rng(1))
    assert rates["real"] == 1.0
    # the decoder reads coordinates against the codes, so a rotation or a matched Gaussian is noise to it
    for name in ("shuffled", "zeroed", "rotation", "gaussian"):
        assert abs(rates[name] - 1 / C) < 0.05, (name, rates)
    intervals = control_intervals(rates, B)
    assert "chance" not in intervals
    assert intervals["real"][0] == 1.0 and intervals["real"][1] > 0.99
    for rate, low, high in intervals.values():
        assert low <= rate <= high


def test_perfect_discrete_listener():
    rng = np.random.default_rng(2)
    targets = rng.integers(0, C, size=B)
    # symbol 0 names the target, symbol 1 is filler
    symbols = np.stack([targets, rng.integers(0, C, size=B)], axis=1)

    def listen(messages: np.ndarray, context: object) -> np.ndarray:
        return _one_hot(messages[:, 0])

    rates = control_success(listen, symbols, None, targets, rng=np.random.default_rng(3), vocab_size=C)
    assert rates["real"] == 1.0
    for name in ("shuffled", "zeroed", "uniform_symbols"):
        assert abs(rates[name] - 1 / C) < 0.05, (name, rates)
    cic = causal_influence(listen, symbols, None, rng=np.random.default_rng(4), interventions=64)
    assert cic == pytest.approx(expected_hard_cic(64, 1 / C), abs=0.1)


def test_rotation_control_spares_a_rotation_invariant_listener():
    # the target index is written in the message's norm, in a random direction per game; a listener that
    # reads only the norm keeps all its success under a rotation (norms survive) but not under shuffling
    # or a matched Gaussian, while the nearest-code listener above fell to chance under the same rotation:
    # the rotation control tells "uses the coordinates" from "uses rotation-invariant features"
    rng = np.random.default_rng(5)
    targets = rng.integers(0, C, size=B)
    u = rng.standard_normal((B, N))
    messages = (targets + 1.0)[:, None] * u / np.linalg.norm(u, axis=1, keepdims=True)

    def norm_listener(messages: np.ndarray, context: object) -> np.ndarray:
        return _one_hot(np.rint(np.linalg.norm(messages, axis=1)).astype(int) - 1)

    rates = control_success(norm_listener, messages, None, targets, rng=np.random.default_rng(6))
    assert rates["real"] == 1.0 and rates["rotation"] == 1.0
    assert abs(rates["shuffled"] - 1 / C) < 0.05
    assert rates["gaussian"] < 0.5


def test_causal_influence_scores_and_interventions():
    messages, context, targets = _game(3)

    def scorer(m: np.ndarray, ctx: dict[str, np.ndarray]) -> np.ndarray:
        return 3.0 * np.einsum("bn,bcn->bc", m, ctx["codes"])

    def softmaxed(m: np.ndarray, ctx: dict[str, np.ndarray]) -> np.ndarray:
        s = scorer(m, ctx)
        e = np.exp(s - s.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    soft = causal_influence(softmaxed, messages, context, rng=np.random.default_rng(0))
    assert causal_influence(scorer, messages, context, rng=np.random.default_rng(0), scores=True) == pytest.approx(soft)
    # a soft listener carries less than the hard one, but clearly some
    assert 0.05 < soft < math.log2(C)
    with pytest.raises(ValueError, match="scores=True"):
        causal_influence(scorer, messages, context, rng=np.random.default_rng(0))

    # explicit interventions: another task's messages, or the real ones (then nothing changes: 0 bits)
    other = [from_other_task(messages, np.random.default_rng(i).standard_normal((100, N)), np.random.default_rng(i))
             for i in range(8)]
    cic = causal_influence(nearest_listener, messages, context, rng=np.random.default_rng(0), interventions=other)
    assert cic == pytest.approx(expected_hard_cic(8, 1 / C), abs=0.1)
    assert causal_influence(nearest_listener, messages, context, rng=np.random.default_rng(0),
                            interventions=[messages] * 4) < 1e-9
    with pytest.raises(ValueError, match="interventions"):
        causal_influence(nearest_listener, messages, context, rng=np.random.default_rng(0),
                         interventions=[messages[:5]])
    with pytest.raises(ValueError, match="interventions"):
        causal_influence(nearest_listener, messages, context, rng=np.random.default_rng(0), interventions=0)


def test_context_passes_through_untouched():
    messages, context, targets = _game(4)
    snapshot = {key: value.copy() for key, value in context.items()}
    seen = []

    def listen(m: np.ndarray, ctx: dict[str, np.ndarray]) -> np.ndarray:
        seen.append(ctx)
        return nearest_listener(m, ctx)

    control_success(listen, messages, context, targets, rng=np.random.default_rng(0))
    causal_influence(listen, messages, context, rng=np.random.default_rng(0), interventions=3)
    assert len(seen) == 5 + 4 and all(ctx is context for ctx in seen)
    assert all(np.array_equal(context[key], snapshot[key]) for key in snapshot)


def test_haar_orthogonal_and_rotation_keep_geometry():
    rng = np.random.default_rng(0)
    q = haar_orthogonal(N, rng)
    assert np.allclose(q @ q.T, np.eye(N), atol=1e-12)
    x = rng.standard_normal((50, N))
    y = random_rotation(x, np.random.default_rng(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert np.allclose(np.linalg.norm(y, axis=1), np.linalg.norm(x, axis=1))
    assert np.allclose(y @ y.T, x @ x.T)  # all inner products, not only norms
    assert not np.allclose(y, x)
    assert np.array_equal(y, random_rotation(x, np.random.default_rng(1)))  # deterministic given the rng
    # Haar: entries have mean 0 (plain QR without the sign fix skews the diagonal's sign)
    first = np.array([haar_orthogonal(3, rng)[0, 0] for _ in range(3000)])
    assert abs(first.mean()) < 0.04
    # more than one trailing axis: flattened, rotated, reshaped; float32 kept
    z = rng.standard_normal((10, 2, 3)).astype(np.float32)
    rz = random_rotation(z, rng)
    assert rz.shape == z.shape and rz.dtype == np.float32
    assert np.allclose(np.linalg.norm(rz.reshape(10, -1), axis=1), np.linalg.norm(z.reshape(10, -1), axis=1), atol=1e-5)


def test_gaussian_matched_moments():
    rng = np.random.default_rng(0)
    mix = np.array([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [-0.3, 0.2, 0.1]])
    x = (rng.standard_normal((40000, 3)) @ mix.T + np.array([1.0, -2.0, 0.5])).astype(np.float32)
    g = gaussian_matched(x, np.random.default_rng(1))
    assert g.shape == x.shape and g.dtype == np.float32
    assert np.allclose(g.mean(axis=0), x.mean(axis=0), atol=0.03)
    assert np.allclose(np.cov(g, rowvar=False), np.cov(x, rowvar=False), atol=0.03)
    # a singular covariance (one-hot codes) is fine: draws stay in the codes' affine span
    onehot = np.eye(4)[rng.integers(0, 4, size=1000)]
    assert np.allclose(gaussian_matched(onehot, rng).sum(axis=1), 1.0, atol=1e-6)


def test_shuffled_is_a_derangement():
    ids = np.arange(B)[:, None]  # (B, 1): each game's message is its own index
    s = shuffled(ids, np.random.default_rng(0))
    assert s.shape == ids.shape and s.dtype == ids.dtype
    assert np.array_equal(np.sort(s[:, 0]), np.arange(B))
    assert not np.any(s[:, 0] == np.arange(B))
    for seed in range(20):  # B = 2 has a single derangement
        assert np.array_equal(shuffled(np.array([[0], [1]]), np.random.default_rng(seed))[:, 0], [1, 0])
    assert np.array_equal(shuffled(np.array([[7.0]]), np.random.default_rng(0)), [[7.0]])


def test_other_controls_shapes_and_draws():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 2, 3))
    assert zeroed(x).shape == x.shape and not zeroed(x).any()
    symbols = rng.integers(1, 9, size=(6, 4)).astype(np.int16)
    assert zeroed(symbols).dtype == np.int16 and not zeroed(symbols).any()

    u = uniform_symbols(symbols, 9, rng)
    assert u.shape == symbols.shape and u.dtype == np.int16 and u.min() >= 0 and u.max() < 9
    big = uniform_symbols(np.zeros((2000, 4), dtype=np.int64), 5, rng)
    assert np.allclose(np.bincount(big.ravel(), minlength=5) / big.size, 0.2, atol=0.02)

    # M >= B: B distinct rows of the other task; M < B: drawn with replacement
    other = np.arange(40, dtype=np.float32).reshape(20, 2, 1) * np.ones((1, 1, 3), dtype=np.float32)
    o = from_other_task(x, other, rng)
    assert o.shape == x.shape and o.dtype == x.dtype
    assert len({row.tobytes() for row in o}) == 6 and all(any(np.array_equal(r, t) for t in other) for r in o)
    assert from_other_task(np.zeros((50, 2, 3)), other[:3], rng).shape == (50, 2, 3)


def test_bad_inputs_raise():
    rng = np.random.default_rng(0)
    symbols = np.zeros((5, 3), dtype=np.int64)
    floats = np.zeros((5, 3))
    for control in (random_rotation, gaussian_matched):
        with pytest.raises(ValueError, match="continuous"):
            control(symbols, rng)
    with pytest.raises(ValueError, match="B >= 2"):
        gaussian_matched(floats[:1], rng)
    with pytest.raises(ValueError, match="discrete"):
        uniform_symbols(floats, 4, rng)
    with pytest.raises(ValueError, match="outside"):
        uniform_symbols(symbols + 4, 4, rng)
    with pytest.raises(ValueError, match="shape"):
        from_other_task(floats, np.zeros((5, 4)), rng)
    with pytest.raises(ValueError, match="continuous like messages"):
        from_other_task(floats, symbols, rng)
    with pytest.raises(ValueError, match="dtype"):
        shuffled(np.zeros((5, 3), dtype=bool), rng)
    with pytest.raises(ValueError, match="vocab_size"):
        control_success(deaf_listener, floats, {"prior": np.full((5, 4), 0.25)}, np.zeros(5, dtype=int),
                        rng=rng, vocab_size=4)
    with pytest.raises(ValueError, match="targets"):
        control_success(deaf_listener, floats, {"prior": np.full((5, 4), 0.25)}, np.full(5, 4), rng=rng)
    with pytest.raises(ValueError, match="shape"):
        control_success(lambda m, ctx: np.ones((4, 4)) / 4, floats, None, np.zeros(5, dtype=int), rng=rng)
