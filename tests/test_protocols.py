"""protocols: fairness (unit power, equal channel uses), receivers per channel, the Fano-vs-capacity check.

The latent protocols run on a real CALM autoencoder trained for a few seconds in a fixture on the
default corpus, with its bpe:8192 ids folded to the 127 most frequent ids plus one "other" id
(V = 128) so that the training fits the test budget. The channel is ``environments.channels.AWGN``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from environments.channels import AWGN, Chain, Erasure
from protocols import (
    HashProtocol,
    HashProtocolConfig,
    QuantizedVectorProtocol,
    QuantizedVectorProtocolConfig,
    UncodedTokenProtocol,
    UncodedTokenProtocolConfig,
    VectorProtocol,
    VectorProtocolConfig,
    capacity_bits,
    cyclic_combine,
    cyclic_fill,
    fano_delivered_bits,
    load_protocol,
    wilson_interval,
)

V_SMALL = 128  # folded vocabulary of the test autoencoder
L = 16  # tokens per passage
K = 4
LATENT = 8  # l, so D = L/K * l = 32 latent coordinates per passage
TRAIN_STEPS = 300


# ---- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folded(train_ids, heldout_ids) -> dict[str, np.ndarray]:
    """Passages (N, L) of real text in a 128-id vocabulary (0 = any rarer id).

    ``train``: 20,000 train-split passages (the autoencoder trains on them); ``fit``: 12,000 of them
    that the protocols fit their statistics on; ``unseen``: the other 8,000, never seen by a fit;
    ``heldout``: distinct validation-split passages (documents nothing was trained or fitted on).
    """
    from calm.data import make_passages

    counts = np.bincount(train_ids, minlength=int(train_ids.max()) + 1)
    lut = np.zeros(max(len(counts), int(heldout_ids.max()) + 1), dtype=np.int64)
    lut[np.argsort(-counts)[: V_SMALL - 1]] = np.arange(1, V_SMALL)
    train = make_passages(lut[train_ids], L, max_passages=20_000, seed=0)
    heldout = make_passages(lut[heldout_ids], L, max_passages=3_000, seed=1)
    # distinct passages only, so that a noiseless soft receiver has no ties
    heldout = np.unique(heldout, axis=0)
    rows = np.random.default_rng(0).permutation(len(train))
    return {"train": train, "fit": train[rows[:12_000]], "unseen": train[rows[12_000:]], "heldout": heldout}


@pytest.fixture(scope="module")
def autoencoder(folded):
    """A real CALM autoencoder (tiny) trained for TRAIN_STEPS steps on folded train chunks."""
    from calm.autoencoder import Autoencoder, AutoencoderConfig

    torch.manual_seed(0)
    config = AutoencoderConfig(
        K=K,
        latent_dim=LATENT,
        hidden_size=48,
        intermediate_size=96,
        num_layers=2,
        vocab_size=V_SMALL,
    )  # CALM's training recipe otherwise: token and latent dropout 0.15, KL floored per dim
    model = Autoencoder(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    chunks = folded["train"].reshape(-1, K)
    first = last = None
    for _ in range(TRAIN_STEPS):
        batch = torch.as_tensor(chunks[rng.integers(0, len(chunks), 256)], dtype=torch.long)
        out = model(batch, generator=gen)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        first = out.loss.item() if first is None else first
        last = out.loss.item()
    model.eval()
    assert last < 0.6 * first, f"the fixture autoencoder did not learn: loss {first:.3f} -> {last:.3f}"
    return model


def make_token(budget=None, vocab_size=V_SMALL) -> UncodedTokenProtocol:
    return UncodedTokenProtocol(UncodedTokenProtocolConfig(vocab_size=vocab_size, budget=budget))


_FITTED: dict = {}


def fitted(kind: str, budget: int | None, autoencoder, fit: np.ndarray, bits: int = 3):
    """A protocol fitted on ``fit`` passages, cached across tests and hypothesis examples."""
    key = (kind, budget, bits, id(autoencoder))
    if key not in _FITTED:
        if kind == "token":
            proto = make_token(budget)
        elif kind == "hash":
            proto = HashProtocol(HashProtocolConfig(vocab_size=V_SMALL, budget=budget))
        elif kind == "vector":
            proto = VectorProtocol(autoencoder, VectorProtocolConfig(budget=budget))
        else:
            proto = QuantizedVectorProtocol(
                autoencoder, QuantizedVectorProtocolConfig(bits_per_dim=bits, budget=budget)
            )
        _FITTED[key] = proto.fit(fit)
    return _FITTED[key]


def draw_games(pool: np.ndarray, *, C: int, games: int, seed: int):
    """``games`` referential games from ``pool``: candidates (G, C, L) and the target index (G,)."""
    rng = np.random.default_rng(seed)
    rows = np.stack([rng.choice(len(pool), size=C, replace=False) for _ in range(games)])  # (G, C)
    return pool[rows], rng.integers(0, C, size=games)


def play(proto, pool: np.ndarray, *, C: int, sigma: float, games: int, seed: int, gain: float = 1.0,
         channel=None):
    """Referential games over AWGN (or ``channel``); per-game correctness of the soft and hard receivers.

    ``gain`` multiplies the sent symbols (1 for a fair protocol; tests use > 1 to fake a leak).
    """
    cands, target = draw_games(pool, C=C, games=games, seed=seed)
    x = proto.encode(cands[np.arange(len(target)), target])  # (G, n)
    channel = AWGN(sigma) if channel is None else channel
    y = channel(gain * x, np.random.default_rng(seed + 1)) / gain  # the environments' channel
    soft = proto.score(y, cands, channel=channel).argmax(axis=1) == target
    hard = proto.hard_score(y, cands, channel=channel).argmax(axis=1) == target
    return soft, hard


# ---- cyclic repetition ----------------------------------------------------------------------------


def test_cyclic_fill_and_combine():
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    filled = cyclic_fill(x, 8)
    np.testing.assert_array_equal(filled[0], [0, 1, 2, 0, 1, 2, 0, 1])
    np.testing.assert_allclose(cyclic_combine(filled, 3), x)
    noisy = filled + np.array([1.0, -1, 0, -1, 1, 0, 0, 0])
    # symbol 0 has copies at 0, 3, 6 -> noise mean 0; symbol 1 at 1, 4, 7 -> 0; symbol 2 at 2, 5 -> 0
    np.testing.assert_allclose(cyclic_combine(noisy, 3), x)


def test_pca_scale_is_calibrated_on_passages_the_basis_did_not_see():
    """With a flat spectrum the top sample components overstate their variance where they were
    fitted; LatentBasis fits PCA on half the passages and returns the other half for calibration."""
    from protocols.latent import LatentBasis

    rng = np.random.default_rng(0)
    mu = rng.standard_normal((2000, 32, 8))  # (M, N, l): an isotropic latent, D = 256
    basis = LatentBasis()
    calibration = basis.fit(mu, 16)
    assert calibration.shape[0] == 1000
    fitted_half = np.mean(basis.forward(mu[0::2]) ** 2)
    calibrated = np.mean(basis.forward(calibration) ** 2)
    fresh = np.mean(basis.forward(rng.standard_normal((2000, 32, 8))) ** 2)
    assert fitted_half > 1.3 * fresh  # the bias that calibrating on the fitted half would bake in
    assert abs(calibrated / fresh - 1) < 0.03


# ---- token protocol -------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [None, 13 * 16, 13 * 5 + 7, 13 * 40 + 3])
def test_token_noiseless_is_exact(train_ids, budget):
    """sigma = 0 on real bpe:8192 text: the token protocol is 100% right, hard and soft."""
    ids = train_ids[: 64 * L].reshape(64, L)
    proto = make_token(budget, vocab_size=8192).fit(ids)
    assert proto.bits == 13
    T = proto.tokens_sent(L)
    x = proto.encode(ids)
    assert x.shape == (64, proto.channel_uses(L)) and x.dtype == np.float32
    np.testing.assert_array_equal(np.abs(x), 1.0)
    decoded = proto.decode(x)
    np.testing.assert_array_equal(decoded[:, :T], ids[:, :T])
    np.testing.assert_array_equal(decoded[:, T:], proto.config.fill_id)
    # candidates: the target and passages that differ in the first (always sent) token
    cands = np.stack([ids, np.roll(ids, 1, axis=0), np.roll(ids, 2, axis=0)], axis=1)
    distinct = (cands[:, 1:, 0] != cands[:, :1, 0]).all(axis=1)
    assert (proto.score(x, cands).argmax(1)[distinct] == 0).all()
    assert (proto.hard_score(x, cands).argmax(1)[distinct] == 0).all()


def test_uncoded_tokens_fill_unsent_positions_as_separation_does_and_keep_it_through_save(train_ids, heldout_ids,
                                                                                           tmp_path):
    """With fill_model, the positions a budget did not send get the source model's guesses after the last sent
    token (TokenSourceModel.fill, separation's fill), and a saved protocol decodes the same after loading."""
    from protocols.source_coding import TokenSourceModel

    train = train_ids[: 512 * L].reshape(512, L)
    test = heldout_ids[: 128 * L].reshape(128, L)
    source = TokenSourceModel(8192, "bigram").fit(train)
    proto = UncodedTokenProtocol(UncodedTokenProtocolConfig(vocab_size=8192, budget=13 * 4, fill_model="bigram"),
                                 source=source).fit(train)
    decoded = proto.decode(proto.encode(test))
    T = proto.tokens_sent(L)
    np.testing.assert_array_equal(decoded[:, :T], test[:, :T])
    np.testing.assert_array_equal(decoded, np.stack([source.fill(row[:T], L) for row in test]))
    plain = UncodedTokenProtocol(UncodedTokenProtocolConfig(vocab_size=8192, budget=13 * 4,
                                                            fill_id=int(np.argmax(source.p1)))).fit(train)
    # the bigram's guesses right after the sent prefix beat the unigram's mode there
    assert (decoded[:, T:] == test[:, T:]).mean() > (plain.decode(plain.encode(test))[:, T:] == test[:, T:]).mean()
    proto.save(tmp_path / "p")
    np.testing.assert_array_equal(load_protocol(tmp_path / "p").decode(proto.encode(test)), decoded)
    with pytest.raises(ValueError, match="fill_model"):
        UncodedTokenProtocolConfig(vocab_size=8192, fill_model="trigram")


def test_token_budget_fitting():
    proto = make_token(budget=100)  # 7 bits per id
    assert proto.bits == 7 and proto.tokens_sent(L) == 14 and proto.channel_uses(L) == 100
    proto = make_token(budget=None)
    assert proto.channel_uses(L) == 7 * L
    proto = make_token(budget=7 * L * 3 + 1)
    assert proto.tokens_sent(L) == L and proto.channel_uses(L) == 7 * L * 3 + 1
    with pytest.raises(ValueError, match="budget"):
        make_token(budget=6).channel_uses(L)


def test_token_repetition_lowers_errors(folded):
    """Three copies of every bit (cyclic repetition, averaged) beat one copy at the same sigma."""
    ids = folded["heldout"][:500]
    rng = np.random.default_rng(0)
    errors = {}
    for budget in (7 * L, 3 * 7 * L):
        proto = make_token(budget).fit(ids)
        x = proto.encode(ids)
        y = x + 0.8 * rng.standard_normal(x.shape)
        errors[budget] = (proto.decode(y) != ids).mean()
    assert errors[3 * 7 * L] < 0.5 * errors[7 * L]


def test_token_invalid_ids_map_to_valid_ids():
    """V = 100 needs 7 bits; decoded ids 100..127 are mapped to V - 1, never out of range."""
    proto = make_token(vocab_size=100).fit(np.zeros((2, 4), dtype=np.int64))
    y = -np.ones((1, 28), dtype=np.float32)  # all bits 1 -> id 127
    np.testing.assert_array_equal(proto.decode(y), 99)


# ---- latent protocols -----------------------------------------------------------------------------


def test_vector_noiseless_reaches_autoencoder_accuracy(autoencoder, folded):
    """sigma = 0: the vector protocol decodes exactly what the autoencoder decodes from mu."""
    heldout = folded["heldout"][:1000]
    with torch.inference_mode():
        direct = autoencoder.reconstruct(torch.as_tensor(heldout, dtype=torch.long)).numpy()
    ae_chunk_acc = (direct == heldout).reshape(-1, K).all(axis=1).mean()
    proto = fitted("vector", None, autoencoder, folded["fit"])
    decoded = proto.decode(proto.encode(heldout))
    chunk_acc = (decoded == heldout).reshape(-1, K).all(axis=1).mean()
    print(f"autoencoder exact-chunk accuracy {ae_chunk_acc:.4f}, vector protocol at sigma 0 {chunk_acc:.4f}")
    assert ae_chunk_acc > 0.05  # a trained model, not chance
    assert abs(chunk_acc - ae_chunk_acc) <= 1e-3
    # soft receiver at sigma 0 picks the target among distinct passages every time
    soft, _ = play(proto, folded["heldout"], C=8, sigma=0.0, games=200, seed=0)
    assert soft.all()


def test_quantized_noiseless_approaches_autoencoder_accuracy(autoencoder, folded):
    """sigma = 0: quantisation is the only loss; at 8 bits per dim it nearly vanishes, at 1 bit it does not."""
    heldout = folded["heldout"][:1000]
    with torch.inference_mode():
        direct = autoencoder.reconstruct(torch.as_tensor(heldout, dtype=torch.long)).numpy()
    ae_acc = (direct == heldout).mean()
    acc = {}
    for bits in (1, 8):
        proto = fitted("quantized", None, autoencoder, folded["fit"], bits=bits)
        acc[bits] = (proto.decode(proto.encode(heldout)) == heldout).mean()
    print(
        f"token accuracy at sigma 0: autoencoder {ae_acc:.4f}, quantised 8 bits {acc[8]:.4f}, 1 bit {acc[1]:.4f}"
    )
    assert acc[8] >= ae_acc - 0.01
    assert acc[1] < acc[8]


@pytest.mark.parametrize(
    "kind, budget", [("vector", 20), ("vector", 50), ("quantized", None), ("quantized", 40)]
)
def test_latent_noiseless_soft_is_exact(autoencoder, folded, kind, budget):
    proto = fitted(kind, budget, autoencoder, folded["fit"])
    soft, hard = play(proto, folded["heldout"], C=8, sigma=0.0, games=200, seed=1)
    # distinct candidates can still share a code after PCA / quantisation; allow rare ties
    assert soft.mean() >= 0.97
    assert soft.mean() >= hard.mean()


def test_budget_fitting_latent(autoencoder, folded):
    D = L // K * LATENT  # 32
    assert fitted("vector", None, autoencoder, folded["fit"]).channel_uses(L) == D
    pca = fitted("vector", 20, autoencoder, folded["fit"])
    assert pca.channel_uses(L) == 20 and pca.code_size(L) == 20 and pca.basis.uses_pca
    rep = fitted("vector", 50, autoencoder, folded["fit"])
    assert rep.channel_uses(L) == 50 and rep.code_size(L) == D and not rep.basis.uses_pca
    q = fitted("quantized", None, autoencoder, folded["fit"])
    assert q.channel_uses(L) == 3 * D
    q40 = fitted("quantized", 40, autoencoder, folded["fit"])
    assert q40.channel_uses(L) == 40 and q40.code_size(L) == 13
    for proto in (pca, rep, q, q40):
        assert proto.encode(folded["heldout"][:3]).shape == (3, proto.channel_uses(L))


PROTOCOL_CASES = [
    ("token", None),
    ("token", 50),
    ("token", 300),
    ("vector", None),
    ("vector", 5),
    ("vector", 20),
    ("vector", 50),
    ("quantized", None),
    ("quantized", 40),
    ("quantized", 200),
]


@pytest.mark.parametrize("kind, budget", PROTOCOL_CASES)
def test_unit_power_on_heldout(autoencoder, folded, kind, budget):
    """Mean power per symbol is 1 within 2% on passages the fit never saw (fixed train statistics).

    On the validation split (other documents) the latent protocols drift further, because this
    test autoencoder's latent scale differs between KJV and Shakespeare and the splits mix them
    differently: asserted within 5% there, and printed.
    """
    proto = fitted(kind, budget, autoencoder, folded["fit"])
    powers = {}
    for split in ("unseen", "heldout"):
        x = proto.encode(folded[split])
        assert x.dtype == np.float32 and x.shape[1] == proto.channel_uses(L)
        powers[split] = float(np.mean(x.astype(np.float64) ** 2))
    print(f"{kind} budget={budget}: mean power {powers}")
    assert abs(powers["unseen"] - 1.0) <= 0.02
    assert abs(powers["heldout"] - 1.0) <= 0.05


def test_encoding_is_per_message(autoencoder, folded):
    """Fixed statistics: a message's symbols do not depend on the rest of its batch."""
    ids = folded["heldout"][:64]
    for kind, budget in [("vector", None), ("vector", 20), ("quantized", 40)]:
        proto = fitted(kind, budget, autoencoder, folded["fit"])
        np.testing.assert_allclose(proto.encode(ids)[:5], proto.encode(ids[:5]), atol=1e-5)


@pytest.mark.parametrize("kind, budget", [("token", None), ("vector", 20), ("quantized", 40)])
def test_save_load_roundtrip(autoencoder, folded, tmp_path, kind, budget):
    proto = fitted(kind, budget, autoencoder, folded["fit"])
    proto.save(tmp_path)
    assert not list(tmp_path.glob("*.pkl")) and (tmp_path / "protocol.json").is_file()
    loaded = load_protocol(tmp_path, autoencoder)
    ids = folded["heldout"][:32]
    np.testing.assert_array_equal(loaded.encode(ids), proto.encode(ids))
    y = proto.encode(ids) + 0.5
    np.testing.assert_array_equal(loaded.decode(y), proto.decode(y))


def test_load_rejects_other_autoencoder(autoencoder, folded, tmp_path):
    from calm.autoencoder import Autoencoder, AutoencoderConfig

    fitted("vector", 20, autoencoder, folded["fit"]).save(tmp_path)
    other = Autoencoder(
        AutoencoderConfig(K=K, latent_dim=16, hidden_size=16, intermediate_size=16, vocab_size=V_SMALL)
    )
    with pytest.raises(ValueError, match="latent_dim"):
        load_protocol(tmp_path, other)
    with pytest.raises(ValueError, match="autoencoder"):
        load_protocol(tmp_path)


# ---- receivers ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("kind, budget", [("token", 60), ("vector", 20), ("quantized", 40)])
def test_soft_at_least_as_accurate_as_hard(autoencoder, folded, kind, budget):
    """At every sigma tried, the ML soft receiver is not worse than decode-then-match (paired test).

    Per game d = soft_correct - hard_correct; the one-sided check fails only when mean(d) is below
    zero by more than 3 standard errors.
    """
    proto = fitted(kind, budget, autoencoder, folded["fit"])
    for i, sigma in enumerate((0.3, 0.7, 1.0, 2.0)):
        soft, hard = play(proto, folded["heldout"], C=8, sigma=sigma, games=400, seed=10 + i)
        d = soft.astype(float) - hard.astype(float)
        se = d.std(ddof=1) / math.sqrt(len(d)) if d.any() else 0.0
        print(f"{kind} sigma={sigma}: soft {soft.mean():.3f} hard {hard.mean():.3f}")
        assert d.mean() >= -3 * se - 1e-12, f"{kind} sigma={sigma}: soft {soft.mean()} < hard {hard.mean()}"


@pytest.mark.slow
@settings(
    max_examples=24,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kind=st.sampled_from(["token", "vector", "quantized"]),
    log_sigma=st.floats(math.log(0.05), math.log(10.0)),
    budget=st.integers(7, 48),
    C=st.integers(2, 64),
)
def test_fano_bound_never_exceeds_capacity(autoencoder, folded, kind, log_sigma, budget, C):
    """Fano's lower bound from the lower Wilson bound of measured soft accuracy <= capacity bits.

    A protocol that beat capacity would be leaking information around the channel.
    """
    sigma = math.exp(log_sigma)
    proto = fitted(kind, budget, autoencoder, folded["fit"])
    n = proto.channel_uses(L)
    games = 300
    soft, _ = play(proto, folded["heldout"], C=C, sigma=sigma, games=games, seed=budget * 1000 + C)
    low, _ = wilson_interval(int(soft.sum()), games, z=3.0)
    delivered = fano_delivered_bits(low, C)
    capacity = capacity_bits(n, sigma)
    assert delivered <= capacity, (
        f"{kind} n={n} sigma={sigma:.3f} C={C}: {delivered:.3f} > {capacity:.3f} bits"
    )


@pytest.mark.slow
def test_fano_check_is_not_vacuous(autoencoder, folded):
    """The check above can fail: the vector protocol gets close to capacity, and symbols sent at
    100x the accounted power (a faked leak) beat it."""
    proto = fitted("vector", 7, autoencoder, folded["fit"])
    sigma, C, games = 1.0, 64, 300
    capacity = capacity_bits(proto.channel_uses(L), sigma)  # 3.5 bits
    soft, _ = play(proto, folded["heldout"], C=C, sigma=sigma, games=games, seed=0)
    fair = fano_delivered_bits(soft.mean(), C)
    print(f"vector n=7 sigma=1 C=64: accuracy {soft.mean():.3f}, Fano {fair:.3f} of {capacity:.3f} bits")
    assert 0.25 * capacity < fair
    soft, _ = play(proto, folded["heldout"], C=C, sigma=sigma, games=games, seed=0, gain=10.0)
    low, _ = wilson_interval(int(soft.sum()), games, z=3.0)
    assert fano_delivered_bits(low, C) > capacity


# ---- bad input ------------------------------------------------------------------------------------


def test_bad_input_raises_clear_errors(autoencoder, folded):
    token = fitted("token", None, autoencoder, folded["fit"])
    vector = fitted("vector", None, autoencoder, folded["fit"])
    ids = folded["heldout"][:4]
    cands = np.stack([ids, ids[::-1]], axis=1)  # (4, 2, L)
    x = vector.encode(ids)
    cases = [
        (lambda: vector.score(x, cands, gain=-np.ones_like(x)), "gain"),
        (lambda: vector.score(x, cands, gain=np.ones((4, 3))), "gain"),
        (lambda: vector.score(x, cands[:, :1]), "C >= 2"),
        (lambda: vector.score(x, cands[:3]), "candidates"),
        (lambda: vector.score(x, cands.astype(np.float32)), "integer dtype"),
        (lambda: vector.encode(ids.astype(np.float64)), "integer dtype"),
        (lambda: vector.encode(ids[:, :12]), "L=16"),
        (lambda: vector.encode(ids + V_SMALL), "token ids"),
        (lambda: vector.encode(torch.as_tensor(ids)), "numpy"),
        (lambda: vector.decode(x[:, :5]), "n=32"),
        (lambda: vector.decode(x.astype(np.int64)), "float dtype"),
        (lambda: vector.decode(np.full_like(x, np.nan)), "finite"),
        (lambda: token.decode(x), "n=112"),
        (lambda: VectorProtocol(autoencoder).fit(folded["fit"][:10, :6]), "multiple of K=4"),
        (lambda: vector.channel_uses(6), "multiple of K=4"),
        (lambda: VectorProtocolConfig(budget=0), "budget"),
        (lambda: QuantizedVectorProtocolConfig(bits_per_dim=0), "bits_per_dim"),
        (lambda: QuantizedVectorProtocolConfig(clip=-1.0), "clip"),
        (
            lambda: QuantizedVectorProtocol(
                autoencoder, QuantizedVectorProtocolConfig(bits_per_dim=4, budget=3)
            ).fit(folded["fit"][:10]),
            "budget",
        ),
        (lambda: UncodedTokenProtocolConfig(vocab_size=1), "vocab_size"),
        (lambda: HashProtocolConfig(vocab_size=V_SMALL, budget=None), "budget"),
        (lambda: fitted("hash", 32, autoencoder, folded["fit"]).decode(x), "sends no tokens"),
        (
            lambda: VectorProtocol(autoencoder, VectorProtocolConfig(budget=20)).fit(folded["fit"][:10]),
            "training passages",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    with pytest.raises(RuntimeError, match="not fitted"):
        VectorProtocol(autoencoder).encode(ids)


def test_make_protocol_builds_each_kind_by_name(autoencoder):
    """make_protocol: every kind at the requested budget, token and hash ones on the autoencoder's vocabulary."""
    from protocols import make_protocol

    names = ("vector", "uncoded-tokens", "quantized", "hash")
    built = {name: make_protocol(name, autoencoder, budget=24, quantized_bits=3) for name in names}
    assert isinstance(built["vector"], VectorProtocol) and built["vector"].config.budget == 24
    assert isinstance(built["uncoded-tokens"], UncodedTokenProtocol) and built["uncoded-tokens"].name == "uncoded-tokens"
    assert built["uncoded-tokens"].config.vocab_size == autoencoder.config.vocab_size
    assert isinstance(built["quantized"], QuantizedVectorProtocol) and built["quantized"].config.bits_per_dim == 3
    assert make_protocol("quantized", autoencoder, budget=24).config.bits_per_dim == 1  # the sign by default
    assert isinstance(built["hash"], HashProtocol) and built["hash"].config.budget == 24
    with pytest.raises(ValueError, match="unknown protocol 'morse'"):
        make_protocol("morse", autoencoder, budget=24)


def test_bits_sent_is_the_payload_actually_sent(autoencoder, folded):
    """bits_sent: uncoded tokens T b (2 tokens of 13 bits at n=32), quantized d b, hash n, vector none."""
    token = UncodedTokenProtocol(UncodedTokenProtocolConfig(vocab_size=8192, budget=32))
    assert token.bits_sent(L) == 26
    assert fitted("quantized", 32, autoencoder, folded["fit"], bits=1).bits_sent(L) == 32
    assert fitted("hash", 32, autoencoder, folded["fit"]).bits_sent(L) == 32
    assert fitted("vector", 32, autoencoder, folded["fit"]).bits_sent(L) is None


# ---- the audit's points: strong baselines, fair receivers ------------------------------------------


def test_hash_protocol_is_a_unit_power_random_code(autoencoder, folded, tmp_path):
    proto = fitted("hash", 32, autoencoder, folded["fit"])
    x = proto.encode(folded["heldout"])
    np.testing.assert_array_equal(np.abs(x), 1.0)
    assert abs(float(np.mean(x)) ) < 0.02  # balanced bits
    np.testing.assert_array_equal(proto.encode(folded["heldout"][:5]), x[:5])  # per message, deterministic
    # one changed token changes about half of the bits
    other = folded["heldout"][:200].copy()
    other[:, 7] = (other[:, 7] + 1) % V_SMALL
    flipped = (proto.encode(other) != x[:200]).mean()
    assert 0.4 < flipped < 0.6
    soft, hard = play(proto, folded["heldout"], C=8, sigma=0.0, games=200, seed=3)
    assert soft.all() and hard.all()
    proto.save(tmp_path)
    np.testing.assert_array_equal(load_protocol(tmp_path).encode(folded["heldout"][:4]), x[:4])


@pytest.mark.slow
def test_hash_soft_matches_or_beats_vector_soft_at_sigma_2(autoencoder, folded):
    """C = 8, n = 32, sigma 2 (-6 dB), the same games and noise: a random code is at least as good as the
    CALM vector (the audit: hash 0.882, vector 0.863). The task needs channel coding, not meaning."""
    vector = fitted("vector", 32, autoencoder, folded["fit"])
    hash_ = fitted("hash", 32, autoencoder, folded["fit"])
    v_soft, _ = play(vector, folded["heldout"], C=8, sigma=2.0, games=3000, seed=21)
    h_soft, _ = play(hash_, folded["heldout"], C=8, sigma=2.0, games=3000, seed=21)
    print(f"sigma 2, C 8, n 32: hash soft {h_soft.mean():.3f}, vector soft {v_soft.mean():.3f}")
    assert h_soft.mean() >= v_soft.mean() - 0.02


def test_uncoded_tokens_hard_receiver_picks_the_nearest_in_hamming_distance(train_ids, heldout_ids):
    """The audit: with hard bits and a minimum-Hamming pick the uncoded-tokens receiver gets 0.963 at
    sigma 1 (exact token matching got 0.346). Real bpe:8192 text, n = 32 (2 tokens of 13 bits), C = 8."""
    from calm.data import make_passages

    pool = np.unique(make_passages(heldout_ids, L, max_passages=3000, seed=2), axis=0)
    proto = make_token(32, vocab_size=8192).fit(make_passages(train_ids, L, max_passages=100, seed=0))
    soft, hard = play(proto, pool, C=8, sigma=1.0, games=2000, seed=5)
    print(f"uncoded tokens at sigma 1: soft {soft.mean():.3f}, hard {hard.mean():.3f}")
    assert hard.mean() >= 0.9
    assert soft.mean() >= hard.mean() - 0.01


def _brute_force_ml(y: np.ndarray, x: np.ndarray, p: float, sigma: float) -> np.ndarray:
    """argmax over candidates of prod_j p(y_j | x_j) for erasure(p) then AWGN(sigma), by the densities."""
    if sigma == 0:
        per = np.where(y[:, None, :] == 0, math.log(p), np.where(y[:, None, :] == x, math.log(1 - p), -np.inf))
    else:
        gauss = lambda d: np.exp(-(d**2) / (2 * sigma**2)) / math.sqrt(2 * math.pi * sigma**2)  # noqa: E731
        per = np.log(p * gauss(y[:, None, :]) + (1 - p) * gauss(y[:, None, :] - x))
    return per.sum(axis=-1).argmax(axis=1)


@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_erasure_soft_receiver_is_maximum_likelihood(autoencoder, folded, sigma):
    """Erasure p = 0.8 (then AWGN at sigma): the soft receiver is within 1% of a brute-force ML receiver
    (the audit: the unmasked Euclidean score got 0.561 where masked ML gets 0.999)."""
    proto = fitted("vector", 32, autoencoder, folded["fit"])
    channel = Chain([Erasure(0.8), AWGN(sigma)]) if sigma else Erasure(0.8)
    cands, target = draw_games(folded["heldout"], C=8, games=1500, seed=7)
    x = proto.encode(cands[np.arange(len(target)), target])
    y = channel(x, np.random.default_rng(8)).astype(np.float64)
    B, C, _ = cands.shape
    xc = proto.encode(cands.reshape(B * C, L)).astype(np.float64).reshape(B, C, -1)
    ours = (proto.score(y, cands, channel=channel).argmax(axis=1) == target).mean()
    brute = (_brute_force_ml(y, xc, 0.8, sigma) == target).mean()
    euclid = ((-((xc - y[:, None, :]) ** 2).sum(-1)).argmax(axis=1) == target).mean()
    print(f"erasure 0.8, sigma {sigma}: ML receiver {ours:.3f}, brute force {brute:.3f}, unmasked Euclidean {euclid:.3f}")
    assert abs(ours - brute) <= 0.01
    assert ours > euclid
