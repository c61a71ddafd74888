"""The coded digital baseline (protocols.coded): Sionna 5G LDPC / Polar codes on Gray PAM over a real channel."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("sionna.phy")

import torch  # noqa: E402

from calm.files import DamagedFileError  # noqa: E402
from environments.channels import AWGN, Chain, Erasure, RayleighBlockFading  # noqa: E402
from protocols.coded import MODULATION_BITS, CodedLink, CodedProtocol, CodedProtocolConfig  # noqa: E402

V, L = 1000, 16  # b = 10 bits per token id; V is not a power of two
MODS = tuple(MODULATION_BITS)
CODES = ("ldpc", "polar")
_CACHE: dict = {}


def make(budget: int = 64, **kw) -> CodedProtocol:
    """A fitted protocol, cached per config (building Sionna's blocks is cheap but not free)."""
    key = (budget, tuple(sorted(kw.items())))
    if key not in _CACHE:
        cfg = CodedProtocolConfig(vocab_size=kw.pop("vocab_size", V), budget=budget, **kw)
        _CACHE[key] = CodedProtocol(cfg).fit(np.zeros((1, L), dtype=np.int64))
    return _CACHE[key]


def distinct_candidates(rng: np.random.Generator, B: int, C: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, C, L) candidates that differ in their first token (so they differ in every source), and targets."""
    cands = rng.integers(0, V, size=(B, C, L))
    cands[:, :, 0] = np.stack([rng.choice(V, size=C, replace=False) for _ in range(B)])
    return cands, rng.integers(0, C, size=B)


# ---- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value", [
    ("vocab_size", 1), ("vocab_size", 2.5), ("budget", 0), ("budget", None), ("budget", True),
    ("source", "latents"), ("code", "turbo"), ("rate", 0.0), ("rate", 1.0), ("rate", float("nan")),
    ("rate", True), ("modulation", "256qam"), ("key", "k" * 65), ("bp_iterations", 0), ("list_size", 6),
    ("list_size", 0),
])
def test_config_rejects_bad_fields(field, value):
    kw = {"vocab_size": V, "budget": 64, field: value}
    with pytest.raises(ValueError, match=field if field != "budget" else "budget"):
        CodedProtocolConfig(**kw)


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("mod", MODS)
def test_sizes(code, mod):
    m = MODULATION_BITS[mod]
    hashed, tokens = make(64, code=code, modulation=mod), make(64, code=code, modulation=mod, source="tokens")
    for p in (hashed, tokens):
        assert p.N == 64 * m and p.coded_bits_per_use == m and p.channel_uses(L) == 64
        assert p.bits_sent(L) == p.k and p.actual_rate == p.k / p.N
    assert hashed.k == round(0.5 * 64 * m) and not hashed.decodes_tokens
    assert tokens.tokens == math.floor(0.5 * 64 * m / 10) and tokens.k == tokens.tokens * 10 and tokens.decodes_tokens
    assert tokens.actual_rate <= 0.5 and tokens.informative_positions(L) == slice(0, tokens.tokens)


# ---- encoder -------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("mod", MODS)
@pytest.mark.parametrize("source", ["hash", "tokens"])
def test_encode_unit_power_exact_n_per_message(code, mod, source):
    p = make(64, code=code, modulation=mod, source=source)
    ids = np.random.default_rng(0).integers(0, V, size=(128, L))
    x = p.encode(ids)
    assert x.shape == (128, 64) and x.dtype == np.float32
    # the PAM points and nothing else, mean power 1 (the constellation is unit-energy, the bits scrambled)
    assert np.isin(np.round(x, 5), np.round(p.link.points.astype(np.float32), 5)).all()
    assert abs(float(np.mean(x.astype(np.float64) ** 2)) - 1.0) < (1e-6 if MODULATION_BITS[mod] == 1 else 0.05)
    # per message: a message's symbols do not depend on its batch
    for i in (0, 5, 127):
        np.testing.assert_array_equal(p.encode(ids[i : i + 1])[0], x[i])
    np.testing.assert_array_equal(p.encode(ids[::-1])[::-1], x)


def test_power_with_a_skewed_source():
    """Token ids all below 8 (7 of 10 bits always 0): the scrambler keeps 64-QAM's mean power near 1."""
    p = make(64, modulation="64qam", source="tokens")
    x = p.encode(np.random.default_rng(1).integers(0, 8, size=(256, L)))
    assert abs(float(np.mean(x.astype(np.float64) ** 2)) - 1.0) < 0.1


# ---- noiseless decoding --------------------------------------------------------------------------


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("mod", MODS)
def test_noiseless_receivers(code, mod):
    """Hard decoding recovers the source bits exactly; soft and hard receivers pick the target of C=8."""
    rng = np.random.default_rng(2)
    p = make(64, code=code, modulation=mod)
    cands, target = distinct_candidates(rng, 12, 8)
    x = p.encode(cands[np.arange(12), target]).astype(np.float64)
    # sigma-0 conventions (channel None, AWGN(0)) are unit-variance likelihoods: LLRs of SNR 0 dB, fine
    # for 1 and 2 bits per use; 8-PAM needs the receiver told a small sigma (docstring of protocols.coded)
    channels = [None, AWGN(0.0), AWGN(1e-3)] if MODULATION_BITS[mod] < 3 else [AWGN(1e-3)]
    for channel in channels:
        bits = p.link.receive(x, channel)
        np.testing.assert_array_equal(bits, p.source_bits(cands[np.arange(12), target]))
        hard = p.hard_score(x, cands, channel=channel)
        assert hard.shape == (12, 8) and hard.dtype == np.float64
        np.testing.assert_array_equal(hard[np.arange(12), target], 0.0)
        assert (hard.argmax(1) == target).all()
        assert (p.score(x, cands, channel=channel).argmax(1) == target).all()


@pytest.mark.parametrize("code", CODES)
@pytest.mark.parametrize("mod", ["bpsk", "16qam", "64qam"])
def test_tokens_decode_first_T_tokens(code, mod):
    p = make(64, code=code, modulation=mod, source="tokens")
    ids = np.random.default_rng(3).integers(0, V, size=(10, L))
    ids[0, : p.tokens] = V - 1  # the largest id
    out = p.decode(p.encode(ids).astype(np.float64), channel=AWGN(1e-3))
    assert out.shape == (10, L) and out.dtype == np.int64
    np.testing.assert_array_equal(out[:, : p.tokens], ids[:, : p.tokens])
    np.testing.assert_array_equal(out[:, p.tokens :], 0)


def test_decode_maps_out_of_range_ids_to_last():
    """b = 10 bits can spell ids up to 1023 >= V: the decoder clips them to V - 1."""
    p = make(64, source="tokens")
    bits = np.ones((1, p.k), dtype=np.uint8)  # every token spells 1023
    y = p.link.modulate(bits).astype(np.float64)
    out = p.decode(y, channel=AWGN(1e-3))
    np.testing.assert_array_equal(out[0, : p.tokens], V - 1)


def test_hash_source_sends_no_tokens():
    p = make(64)
    with pytest.raises(ValueError, match="no tokens"):
        p.decode(np.zeros((1, 64)))


# ---- demapper ------------------------------------------------------------------------------------


def sionna_llr(y: np.ndarray, m: int, no: np.ndarray | float, kind: str = "pam") -> np.ndarray:
    from sionna.phy.mapping import Demapper

    demapper = Demapper("app", kind, m, precision="double", device="cpu")
    return demapper(torch.as_tensor(y, dtype=torch.complex128), torch.as_tensor(no, dtype=torch.float64)).numpy()


@pytest.mark.parametrize("mod", MODS)
def test_demapper_equals_sionna_on_awgn(mod):
    m, sigma = MODULATION_BITS[mod], 0.6
    link = make(32, modulation=mod).link
    rng = np.random.default_rng(4)
    x = link.modulate(rng.integers(0, 2, size=(20, link.k)))
    y = x + sigma * rng.standard_normal(x.shape)
    ours = link.demap(y, AWGN(sigma))
    np.testing.assert_allclose(ours, sionna_llr(y, m, 2 * sigma**2), atol=1e-5)
    # channel None is unit-variance AWGN
    np.testing.assert_allclose(link.demap(y, None), sionna_llr(y, m, 2.0), atol=1e-5)
    # fading with a known gain: Sionna on y / g with the noise variance scaled by 1 / g^2
    gain = rng.uniform(0.3, 2.0, size=y.shape)
    yf = gain * x + sigma * rng.standard_normal(x.shape)
    no = 2 * sigma**2 / gain**2
    np.testing.assert_allclose(link.demap(yf, RayleighBlockFading(sigma), gain), sionna_llr(yf / gain, m, no),
                               atol=1e-5)


@pytest.mark.parametrize("mod", ["qpsk", "16qam", "64qam"])
def test_pam_is_the_per_dimension_view_of_sionna_qam(mod):
    """Real uses (2i, 2i+1) as I and Q of a Sionna square-QAM symbol (scaled to unit complex energy): the
    QAM label bits (b0, b1, b2, ...) are I's (b0, b2, ...) and Q's (b1, b3, ...), LLRs equal."""
    m, sigma = MODULATION_BITS[mod], 0.5
    link = make(32, modulation=mod).link
    rng = np.random.default_rng(5)
    y = link.modulate(rng.integers(0, 2, size=(6, link.k))) + sigma * rng.standard_normal((6, 32))
    ours = link.demap(y, AWGN(sigma)).reshape(6, 16, 2, m)  # (B, complex symbol, I/Q, bit)
    z = (y[:, 0::2] + 1j * y[:, 1::2]) / math.sqrt(2)  # complex symbols of unit energy
    # per real dimension the noise variance is sigma^2 / 2 after the scaling: Sionna's complex no = sigma^2
    qam = sionna_llr(z, 2 * m, sigma**2, kind="qam").reshape(6, 16, m, 2)  # (..., bit pair, I/Q)
    np.testing.assert_allclose(ours, qam.transpose(0, 1, 3, 2), atol=1e-5)


def test_erased_symbols_give_zero_llr():
    link = make(64, modulation="16qam").link
    rng = np.random.default_rng(6)
    x = link.modulate(rng.integers(0, 2, size=(4, link.k)))
    np.testing.assert_array_equal(link.demap(Erasure(1.0)(x, rng), Erasure(1.0)), 0.0)
    # erasure then AWGN: the mixture likelihood; erasure alone: exactly the erased symbols give 0
    y = Erasure(0.5)(x, rng)
    llr = link.demap(y, Erasure(0.5)).reshape(4, 64, 2)
    assert (llr[y == 0] == 0).all() and (llr[y != 0] != 0).all()
    mixed = Chain([Erasure(0.3), AWGN(0.5)])
    assert np.isfinite(link.demap(mixed(x, rng), mixed)).all()


def test_erased_message_still_decodes_from_the_rest():
    """LDPC at rate 1/2 corrects 25% erasures (capacity 1 - p = 0.75 bit per use)."""
    p = make(128)
    rng = np.random.default_rng(7)
    cands, target = distinct_candidates(rng, 20, 8)
    channel = Chain([Erasure(0.25), AWGN(0.1)])
    y = channel(p.encode(cands[np.arange(20), target]), rng).astype(np.float64)
    assert (p.hard_score(y, cands, channel=channel).argmax(1) == target).mean() >= 0.95


# ---- coding gain ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", CODES)
def test_coding_gain_over_uncoded_bpsk(code):
    """Rate 1/2 BPSK on AWGN at the Eb/N0 where uncoded BPSK has BER 1e-2: the coded BER is 10x lower."""
    ebn0_db = 4.3  # uncoded Q(sqrt(2 Eb/N0)) = 1.0e-2
    uncoded = 0.5 * math.erfc(math.sqrt(10 ** (ebn0_db / 10)))
    assert 0.009 < uncoded < 0.011
    link = CodedLink(256, 512, code=code)
    sigma = math.sqrt(1 / (2 * 0.5 * 10 ** (ebn0_db / 10)))
    rng = np.random.default_rng(8)
    u = rng.integers(0, 2, size=(100, 256), dtype=np.uint8)
    y = AWGN(sigma)(link.modulate(u), rng)
    coded = float((link.receive(y, AWGN(sigma)) != u).mean())  # 25600 bits: uncoded would err ~256 times
    assert coded * 10 < uncoded


def test_hard_receiver_wins_games_at_sigma_1():
    """n = 128 BPSK uses at SNR 0 dB (capacity 0.5 bit per use), C = 8: the decoded hash bits are nearest
    to the target's. LDPC at rate 1/2 (at capacity: BP fails gracefully, its bits stay near the target's);
    polar at rate 1/4, since beyond its cliff SCL returns near-random bits (rate 1/2 wins ~55% of games)."""
    rng = np.random.default_rng(9)
    for code, rate in (("ldpc", 0.5), ("polar", 0.25)):
        p = make(128, code=code, rate=rate)
        cands, target = distinct_candidates(rng, 100, 8)
        channel = AWGN(1.0)
        y = channel(p.encode(cands[np.arange(100), target]), rng).astype(np.float64)
        assert (p.hard_score(y, cands, channel=channel).argmax(1) == target).mean() >= 0.95
        assert (p.score(y, cands, channel=channel).argmax(1) == target).mean() >= 0.95


# ---- limits, save / load -------------------------------------------------------------------------


@pytest.mark.parametrize("kw, limit", [
    ({"budget": 8}, "k >= 12"),  # LDPC: k = 4
    ({"budget": 8, "code": "polar"}, "N >= 18"),
    ({"budget": 20, "code": "polar", "rate": 0.9}, "CRC"),  # k = 18, 18 + 6 > 20
    ({"budget": 2000, "code": "polar"}, "at most N = 1088"),
    ({"budget": 256, "rate": 0.1}, "1/5"),
    ({"budget": 64, "rate": 0.97}, "0.95"),
    ({"budget": 16, "source": "tokens"}, "one token"),
    ({"budget": 20000, "modulation": "64qam", "rate": 0.5}, "k = 8448"),
])
def test_infeasible_budgets_name_the_budget(kw, limit):
    cfg = CodedProtocolConfig(vocab_size=V, **kw)
    with pytest.raises(ValueError, match=f"budget={kw['budget']}") as err:
        CodedProtocol(cfg)
    assert limit in str(err.value)


def test_tokens_budget_longer_than_the_passage():
    p = CodedProtocol(CodedProtocolConfig(vocab_size=V, budget=512, source="tokens"))  # T = 25 > L
    with pytest.raises(ValueError, match="budget=512"):
        p.fit(np.zeros((1, L), dtype=np.int64))


@pytest.mark.parametrize("kw", [{"code": "polar", "modulation": "16qam", "source": "tokens"},
                                {"key": "another key", "bp_iterations": 5}])
def test_save_load_round_trip(tmp_path, kw):
    p = make(64, **kw)
    p.save(tmp_path)
    q = CodedProtocol.load(tmp_path)
    assert q.config == p.config and q.seq_len == L and (q.k, q.N) == (p.k, p.N)
    ids = np.random.default_rng(10).integers(0, V, size=(8, L))
    np.testing.assert_array_equal(q.encode(ids), p.encode(ids))
    # a hand-edited config is refused
    import json

    meta = json.loads((tmp_path / "protocol.json").read_text())
    meta["config"]["rate"] = 0.25
    (tmp_path / "protocol.json").write_text(json.dumps(meta))
    with pytest.raises(DamagedFileError, match="do not match"):  # the two files disagree: damage, named
        CodedProtocol.load(tmp_path)
