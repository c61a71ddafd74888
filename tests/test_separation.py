"""The separation protocol: constriction range coding of token ids -> Sionna 5G code -> Gray PAM."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from environments.channels import AWGN
from protocols.separation import (
    FILL_HORIZON,
    MCS_MODULATIONS,
    MCS_RATES,
    SLACK_BITS,
    SeparationProtocol,
    SeparationProtocolConfig,
    TokenSourceModel,
    mcs_menu,
    separation_bound_accuracy,
    separation_bound_tokens,
)

V = 8192
L = 32


@pytest.fixture(scope="module")
def train_passages(train_ids) -> np.ndarray:
    from calm.data import make_passages

    return make_passages(train_ids, L)


@pytest.fixture(scope="module")
def heldout(heldout_ids) -> np.ndarray:
    from calm.data import make_passages

    return make_passages(heldout_ids, L, max_passages=512, seed=1).astype(np.int64)


@pytest.fixture(scope="module")
def sources(train_passages) -> dict[str, TokenSourceModel]:
    return {kind: TokenSourceModel(V, kind).fit(train_passages) for kind in ("unigram", "bigram")}


def make(sources, train_passages, **kw) -> SeparationProtocol:
    cfg = SeparationProtocolConfig(vocab_size=V, **kw)
    return SeparationProtocol(cfg, source=sources[cfg.source_model]).fit(train_passages[:4])


# ---- the link round-trips bits ------------------------------------------------------------------


@pytest.mark.parametrize("source_model", ["unigram", "bigram"])
@pytest.mark.parametrize("code", ["ldpc", "polar"])
@pytest.mark.parametrize("modulation,budget", [("bpsk", 64), ("16qam", 32), ("64qam", 24)])
def test_noiseless_round_trip_recovers_the_sent_prefix(sources, train_passages, heldout, source_model, code,
                                                       modulation, budget):
    proto = make(sources, train_passages, budget=budget, source_model=source_model, code=code, rate=0.5,
                 modulation=modulation)
    ids = heldout[:24]
    T = proto.tokens_in_frame(ids)
    assert T.shape == (24,) and (T >= 0).all() and (T <= L).all() and T.mean() >= 2
    x = proto.encode(ids)
    assert x.shape == (24, budget) and x.dtype == np.float32
    channels = [AWGN(0.0)] + ([None] if modulation == "bpsk" else [])
    for channel in channels:
        out = proto.decode(x.astype(np.float32), channel=channel)
        assert out.shape == (24, L) and out.dtype == np.int64
        for i in range(24):
            t = int(T[i])
            np.testing.assert_array_equal(out[i, :t], ids[i, :t])
            # unsent positions: the model's best guess (greedy successor chain for the bigram)
            np.testing.assert_array_equal(out[i], proto.source.fill(ids[i, :t], L))


def test_unsent_positions_get_the_documented_best_guess(sources):
    uni, bi = sources["unigram"], sources["bigram"]
    best = int(np.argmax(uni.p1))
    np.testing.assert_array_equal(uni.fill(np.array([5, 7]), 5), [5, 7, best, best, best])
    out = bi.fill(np.array([5]), 4 + FILL_HORIZON)
    # j steps after the last recovered token: the argmax of the bigram's j-step marginal, then the unigram's best
    v = bi.rows(np.array([5]))[0]
    assert out[1] == int(np.argmax(v))
    chunks = np.array_split(np.arange(V), 16)
    v2 = sum(bi.rows(c).T @ v[c] for c in chunks)  # the chain's next step, densely
    np.testing.assert_allclose(bi.step(v), v2, rtol=1e-9, atol=1e-15)
    assert out[2] == int(np.argmax(v2))
    assert (out[1 + FILL_HORIZON :] == int(np.argmax(bi.p1))).all()
    assert bi.fill(np.zeros(0, np.int64), 1)[0] == best  # position 0: the unigram's best


@pytest.mark.parametrize("source_model", ["unigram", "bigram"])
@pytest.mark.parametrize("code", ["ldpc", "polar"])
def test_generous_budget_sends_the_whole_passage(sources, train_passages, heldout, source_model, code):
    proto = make(sources, train_passages, budget=256, source_model=source_model, code=code, rate=0.75,
                 modulation="64qam")
    ids = heldout[:16] if code == "polar" else heldout[:64]
    assert (proto.tokens_in_frame(ids) == L).all()
    out = proto.decode(proto.encode(ids), channel=AWGN(0.0))
    assert (out == ids).mean() == 1.0


def test_arbitrary_token_ids_are_codable(sources, train_passages):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, V, size=(8, L))  # unseen pairs, rare tokens: smoothing keeps every id codable
    for kind in ("unigram", "bigram"):
        proto = make(sources, train_passages, budget=128, source_model=kind, rate=0.75, modulation="64qam")
        T = proto.tokens_in_frame(ids)
        assert (T >= 1).all()
        out = proto.decode(proto.encode(ids), channel=AWGN(0.0))
        for i in range(8):
            np.testing.assert_array_equal(out[i, : T[i]], ids[i, : T[i]])


# ---- source coding ------------------------------------------------------------------------------


def test_coded_length_matches_the_cross_entropy(sources, heldout):
    passages = heldout[:96]
    header = np.ceil(np.log2(L + 1)) / L  # bits per token
    rates = {}
    for kind, src in sources.items():
        H = src.entropy_rate(passages)
        coded = src.coded_rate(passages)
        assert abs(coded["bits_per_token"] - H) <= 0.05 * H + header, (kind, H, coded)
        assert coded["words_bits_per_token"] >= coded["bits_per_token"]  # whole 32-bit words cost more
        rates[kind] = (H, coded["bits_per_token"])
    assert rates["bigram"][0] < rates["unigram"][0] - 1.0  # real text: the bigram saves > 1 bit per token
    assert rates["bigram"][1] < rates["unigram"][1] - 1.0


def test_protocol_entropy_rate_reports_model_and_coder(sources, train_passages, heldout):
    proto = make(sources, train_passages, budget=64, source_model="bigram")
    r = proto.entropy_rate(heldout[:16])
    assert set(r) == {"entropy", "coded", "coded_words"}
    assert 3 < r["entropy"] < 12 and r["coded"] <= r["coded_words"]


def test_source_model_fits_from_counts(train_passages):
    small = np.array([[1, 2, 1, 2], [1, 2, 3, 3]])
    m = TokenSourceModel(5, "bigram", alpha=1.0).fit(small)
    np.testing.assert_allclose(m.p1, (np.bincount(small.ravel(), minlength=5) + 1.0) / (8 + 5))
    # Witten-Bell: context 1 was followed by 2 three times (one distinct successor): lam = 3 / 4
    np.testing.assert_allclose(m.lam[1], 3 / 4)
    np.testing.assert_allclose(m.rows(np.array([1]))[0], 0.25 * m.p1 + 0.75 * np.eye(5)[2])
    np.testing.assert_allclose(m.rows(np.array([-1, 4])), np.stack([m.p1, m.p1]))  # start, unseen context
    np.testing.assert_allclose(m.rows(np.arange(5)).sum(axis=1), 1.0)
    fixed = TokenSourceModel(5, "bigram", alpha=1.0, bigram_lambda=0.9).fit(small)
    np.testing.assert_allclose(fixed.rows(np.array([1]))[0], 0.1 * fixed.p1 + 0.9 * np.eye(5)[2])
    probs = m.token_probs(small)
    rows = m.rows(np.array([-1, 1, 2, 1]))
    np.testing.assert_allclose(probs[0], rows[np.arange(4), small[0]])


# ---- power, shapes, per-message encoding --------------------------------------------------------


def test_unit_power_exact_symbols_and_per_message_encoding(sources, train_passages, heldout):
    bpsk = make(sources, train_passages, budget=64, source_model="bigram", modulation="bpsk")
    x = bpsk.encode(heldout[:32])
    np.testing.assert_array_equal(np.abs(x), 1.0)
    for modulation, budget in [("16qam", 48), ("64qam", 40)]:
        proto = make(sources, train_passages, budget=budget, source_model="unigram", modulation=modulation,
                     rate=0.75)
        x = proto.encode(heldout)
        assert x.shape == (len(heldout), budget)
        assert abs(float((x.astype(np.float64) ** 2).mean()) - 1.0) < 0.02
        # per message: a message's symbols never depend on its batch; deterministic
        perm = np.random.default_rng(0).permutation(16)
        np.testing.assert_array_equal(proto.encode(heldout[:16][perm]), x[:16][perm])
        np.testing.assert_array_equal(proto.encode(heldout[3:4])[0], x[3])
        assert proto.bits_sent(L) == proto.k == round(0.75 * budget * {"16qam": 2, "64qam": 3}[modulation])
        frames, T = proto.frames(heldout[:16])
        assert frames.shape == (16, proto.k)
        np.testing.assert_array_equal(proto.link.modulate(frames), x[:16])
        np.testing.assert_array_equal(T, proto.tokens_in_frame(heldout[:16]))


# ---- corrupted frames ---------------------------------------------------------------------------


@pytest.mark.parametrize("source_model", ["unigram", "bigram"])
@pytest.mark.parametrize("code", ["ldpc", "polar"])
def test_corrupted_frames_never_raise(sources, train_passages, heldout, source_model, code):
    proto = make(sources, train_passages, budget=48, source_model=source_model, code=code,
                 modulation="16qam", rate=0.75)
    rng = np.random.default_rng(1)
    y = (proto.encode(heldout[:16]) + 3.0 * rng.standard_normal((16, 48))).astype(np.float32)
    out = proto.decode(y, channel=AWGN(3.0))
    assert out.shape == (16, L) and out.min() >= 0 and out.max() < V
    frames = rng.integers(0, 2, size=(200, proto.k))  # random bits, headers up to 63 > L
    frames[:50, : proto.header_bits] = 1
    out = proto.decode_frames(frames)
    assert out.shape == (200, L) and out.dtype == np.int64 and out.min() >= 0 and out.max() < V
    # a frame that runs out of bits stops: never more information than the payload plus the slack
    src = proto.source
    for _ in range(20):
        words = rng.integers(0, 2**32, size=6, dtype=np.uint64).astype(np.uint32)
        got = src.decode_words(words, L, max_info_bits=proto.payload_bits + SLACK_BITS)
        assert len(got) < L
        info = -np.log2(src.token_probs(got[None, :])[0]).sum() if len(got) else 0.0
        assert info <= proto.payload_bits + SLACK_BITS + 1e-6


# ---- construction, persistence ------------------------------------------------------------------


def test_infeasible_budgets_raise_naming_the_budget():
    with pytest.raises(ValueError, match="budget=8"):
        SeparationProtocol(SeparationProtocolConfig(vocab_size=V, budget=8, rate=0.5, modulation="bpsk"))
    with pytest.raises(ValueError, match="budget=4"):
        SeparationProtocol(SeparationProtocolConfig(vocab_size=V, budget=4, code="polar", modulation="16qam"))
    with pytest.raises(ValueError, match="rate"):
        SeparationProtocolConfig(vocab_size=V, budget=64, rate=1.2)
    with pytest.raises(ValueError, match="source_model"):
        SeparationProtocolConfig(vocab_size=V, budget=64, source_model="trigram")
    with pytest.raises(ValueError, match="alpha"):
        SeparationProtocolConfig(vocab_size=V, budget=64, alpha=0)


def test_save_load_round_trip(sources, train_passages, heldout, tmp_path):
    proto = make(sources, train_passages, budget=40, source_model="bigram", modulation="16qam", rate=2 / 3)
    proto.save(tmp_path)
    meta = json.loads((tmp_path / "protocol.json").read_text())
    assert meta["protocol"] == "separation" and meta["seq_len"] == L
    loaded = SeparationProtocol.load(tmp_path)
    ids = heldout[:24]
    x = proto.encode(ids)
    np.testing.assert_array_equal(loaded.encode(ids), x)
    y = (x + 0.3 * np.random.default_rng(2).standard_normal(x.shape)).astype(np.float32)
    np.testing.assert_array_equal(loaded.decode(y, channel=AWGN(0.3)), proto.decode(y, channel=AWGN(0.3)))


def test_hard_score_counts_differing_tokens(sources, train_passages, heldout):
    proto = make(sources, train_passages, budget=256, source_model="bigram", rate=0.75, modulation="64qam")
    ids = heldout[:4]
    cands = np.stack([ids, heldout[4:8], ids.copy()], axis=1)
    cands[:, 2, :3] = (cands[:, 2, :3] + 1) % V
    s = proto.hard_score(proto.encode(ids), cands, channel=AWGN(0.0))
    np.testing.assert_array_equal(s[:, 0], 0.0)
    np.testing.assert_array_equal(s[:, 2], -3.0)
    assert (s[:, 1] < -3).all()


# ---- link adaptation and bounds -----------------------------------------------------------------


@pytest.mark.parametrize("code", ["ldpc", "polar"])
@pytest.mark.parametrize("n", [8, 16, 64])
def test_mcs_menu_lists_exactly_the_feasible_configs(code, n):
    menu = mcs_menu(n, vocab_size=V, source_model="bigram", code=code)
    listed = {(c.rate, c.modulation) for c in menu}
    keys = [(c.info_bits(), c.modulation) for c in menu]
    assert len(keys) == len(set(keys))  # no duplicate protocol
    for cfg in menu:
        assert cfg.budget == n and cfg.code == code and cfg.source_model == "bigram"
        SeparationProtocol(cfg)  # builds
    for modulation in MCS_MODULATIONS:
        for rate in MCS_RATES:
            if (rate, modulation) in listed:
                continue
            cfg = SeparationProtocolConfig(vocab_size=V, budget=n, code=code, rate=rate, modulation=modulation)
            if (cfg.info_bits(), modulation) in keys:
                continue  # a repeat of a listed protocol
            with pytest.raises(ValueError, match=f"budget={n}"):
                SeparationProtocol(cfg)
    if n == 8 and code == "ldpc":
        assert listed == {(3 / 4, "16qam"), (5 / 6, "16qam"), (0.9, "16qam"), (1 / 2, "64qam"),
                          (2 / 3, "64qam"), (3 / 4, "64qam"), (5 / 6, "64qam"), (0.9, "64qam")}


def test_separation_bounds():
    assert separation_bound_tokens(100.0, 10.0, 32) == 10.0
    assert separation_bound_tokens(1000.0, 10.0, 32) == 32.0
    assert separation_bound_tokens(0.0, 7.0, 32) == 0.0
    assert separation_bound_accuracy(100.0, 10.0, 32) == pytest.approx(10 / 32)
    assert separation_bound_accuracy(100.0, 10.0, 32, fill_accuracy=0.1) == pytest.approx((10 + 22 * 0.1) / 32)
    assert separation_bound_accuracy(1e9, 10.0, 32, fill_accuracy=0.5) == 1.0
    np.testing.assert_allclose(separation_bound_tokens(np.array([16.0, 64.0, 1e4]), 8.0, 32), [2.0, 8.0, 32.0])
    with pytest.raises(ValueError):
        separation_bound_tokens(10.0, 0.0, 32)
    with pytest.raises(ValueError):
        separation_bound_accuracy(10.0, 5.0, 32, fill_accuracy=1.5)


# ---- the token LM as the source model (source_model="lm"), the frame coder's memo ------------------


def tiny_lm(seed: int = 0):
    """An untrained one-layer token LM over the corpus's V ids (its rows are near uniform: ~13 bits/token)."""
    import torch

    from calm.baseline import TokenTransformer
    from calm.baseline import preset as baseline_preset

    torch.manual_seed(seed)
    return TokenTransformer(baseline_preset("tiny", V, hidden_size=32, num_layers=1, num_heads=2,
                                            intermediate_size=64, max_positions=64)).eval()


@pytest.fixture(scope="module")
def lm_source(train_passages):
    from protocols.lm_source import LMSourceModel

    return LMSourceModel(tiny_lm()).fit(train_passages)


def make_lm(lm_source, train_passages, **kw) -> SeparationProtocol:
    cfg = SeparationProtocolConfig(vocab_size=V, source_model="lm", token_lm=lm_source.weights_id, **kw)
    return SeparationProtocol(cfg, source=lm_source).fit(train_passages[:4])


@pytest.mark.parametrize("code,modulation,budget", [("ldpc", "16qam", 48), ("polar", "bpsk", 96)])
def test_lm_frames_round_trip_to_the_prefix_and_the_lm_fill(lm_source, train_passages, heldout, code, modulation,
                                                            budget):
    proto = make_lm(lm_source, train_passages, budget=budget, code=code, modulation=modulation, rate=0.75)
    ids = heldout[:6]
    T = proto.tokens_in_frame(ids)
    assert (T >= 1).all() and (T < L).all()
    out = proto.decode(proto.encode(ids), channel=AWGN(0.0))
    for i in range(len(ids)):
        np.testing.assert_array_equal(out[i, : T[i]], ids[i, : T[i]])
        np.testing.assert_array_equal(out[i], lm_source.fill(ids[i, : T[i]], L))  # prefix + the LM's guesses


def test_lm_corrupted_frames_never_raise_and_the_memo_decodes_as_afresh(lm_source, train_passages, heldout):
    from protocols.separation_frames import FrameCoder

    proto = make_lm(lm_source, train_passages, budget=48, code="ldpc", modulation="16qam", rate=0.75)
    frames, _ = proto.frames(heldout[:6])
    rng = np.random.default_rng(0)
    flipped = frames.copy()
    flipped[np.arange(6), rng.integers(0, proto.k, 6)] ^= 1  # one bit flipped in each
    noise = rng.integers(0, 2, size=(6, proto.k))
    noise[:3, : proto.header_bits] = 1  # headers beyond L
    fresh = FrameCoder(lm_source, max_passages=0, max_decodes=0)
    for batch in (frames, flipped, noise):
        out = proto.decode_frames(batch)
        assert out.shape == (6, L) and out.dtype == np.int64 and out.min() >= 0 and out.max() < V
        np.testing.assert_array_equal(out, np.stack([fresh.decode(f, proto.header, proto.k, L) for f in batch]))
        np.testing.assert_array_equal(proto.decode_frames(batch), out)  # the memo's answer, again
    assert fresh.counts["decode_hits"] == 0 and proto.coder.counts["decode_hits"] >= 12


@pytest.mark.parametrize("kind", ["bigram", "lm"])
def test_the_coder_codes_a_passage_once_and_decodes_intact_frames_from_memory(sources, lm_source, train_passages,
                                                                             heldout, kind):
    """Every frame size of a bank, one LM pass per passage; intact frames are never decoded; the frames and
    decodes equal those computed afresh, and noisy frames are decoded honestly."""
    from protocols.lm_source import LMSourceModel
    from protocols.separation_frames import FrameCoder

    # a source of its own: a coder that knows only this bank's sizes
    source = (LMSourceModel(lm_source.model) if kind == "lm" else TokenSourceModel(V, "bigram")).fit(train_passages)
    extra = {"token_lm": lm_source.weights_id} if kind == "lm" else {}
    menu = mcs_menu(32, vocab_size=V, source_model=kind, code="ldpc", **extra)[::2]
    bank = [SeparationProtocol(c, source=source).fit(train_passages[:4]) for c in menu]
    coder = bank[0].coder
    assert all(p.coder is coder for p in bank) and len(coder.formats) == len({p.k for p in bank})
    ids = heldout[:5]
    before = coder.counts["passages_coded"]
    frames = [p.frames(ids) for p in bank]
    coded = coder.counts["passages_coded"] - before
    assert coded == (len(ids) if kind == "lm" else len(ids) * len(bank))  # the LM: every size at the first miss
    fresh = FrameCoder(source, max_passages=0, max_decodes=0)
    for p, (f, T) in zip(bank, frames, strict=True):
        for i in range(len(ids)):
            t, frame = fresh.frame(ids[i], p.header, p.k)
            assert t == T[i] and np.array_equal(frame, f[i])
        decodes = coder.counts["decodes"]
        x = p.encode(ids)
        fresh_decodes = np.stack([fresh.decode(r, p.header, p.k, L) for r in f])
        np.testing.assert_array_equal(p.decode(x, channel=AWGN(0.0)), fresh_decodes)
        assert coder.counts["decodes"] == decodes  # intact: from the memo
        y = (x + 0.9 * np.random.default_rng(1).standard_normal(x.shape)).astype(np.float32)
        bits = np.asarray(p.link.receive(y, AWGN(0.9), np.ones_like(y))).astype(np.uint8)
        np.testing.assert_array_equal(p.decode(y, channel=AWGN(0.9)),
                                      np.stack([fresh.decode(r, p.header, p.k, L) for r in bits]))


def test_decode_bound_scores_wrong_frames_as_the_fill_only_guess(sources, train_passages, heldout):
    proto = make(sources, train_passages, budget=32, source_model="bigram", modulation="64qam", rate=0.9)
    ids = heldout[:64]
    x = proto.encode(ids)
    y = (x + 0.12 * np.random.default_rng(0).standard_normal(x.shape)).astype(np.float32)
    bits = np.asarray(proto.link.receive(y, AWGN(0.12), np.ones_like(y))).astype(np.uint8)
    intact = (bits == proto.frames(ids)[0]).all(axis=1)
    assert 0 < intact.sum() < len(ids)  # some frames survive, some do not
    bound = proto.decode_bound(y, ids, channel=AWGN(0.12))
    exact = proto.decode(y, channel=AWGN(0.12))
    np.testing.assert_array_equal(bound[intact], exact[intact])
    guess = proto.source.fill(np.zeros(0, np.int64), L)
    assert (bound[~intact] == guess).all()
    with pytest.raises(ValueError, match="sent_ids"):
        proto.decode_bound(y, ids[:3], channel=AWGN(0.12))


def test_an_lm_bank_records_its_lm_and_loads_only_under_it(lm_source, train_passages, heldout, tokenizer, tmp_path):
    from calm.checkpoint import save_pretrained
    from calm.files import DamagedFileError
    from protocols.lm_source import LMSourceModel
    from protocols.separation import is_bank, load_bank, mcs_name, save_bank

    menu = mcs_menu(32, vocab_size=V, source_model="lm", code="ldpc", token_lm=lm_source.weights_id)[:3]
    bank = [SeparationProtocol(c, source=lm_source).fit(train_passages) for c in menu]
    save_bank(bank, tmp_path / "bank")
    assert is_bank(tmp_path / "bank")
    meta = json.loads((tmp_path / "bank" / "protocol.json").read_text())
    assert meta["config"]["source_model"] == "lm" and meta["config"]["token_lm"] == lm_source.weights_id
    save_pretrained(lm_source.model, tmp_path / "lm", tokenizer)  # the same weights, from a checkpoint directory
    for given in (lm_source, tmp_path / "lm"):
        loaded = load_bank(tmp_path / "bank", token_lm=given)
        assert list(loaded) == [mcs_name(p.config) for p in bank]
        ids = heldout[:4]
        for p, q in zip(bank, loaded.values(), strict=True):
            np.testing.assert_array_equal(q.encode(ids), p.encode(ids))
            np.testing.assert_array_equal(q.decode(p.encode(ids), channel=AWGN(0.0)),
                                          p.decode(p.encode(ids), channel=AWGN(0.0)))
    with pytest.raises(ValueError, match=lm_source.weights_id):  # no LM: the bank names the one it needs
        load_bank(tmp_path / "bank")
    other = LMSourceModel(tiny_lm(seed=1))
    with pytest.raises(DamagedFileError, match=f"{lm_source.weights_id}.*{other.weights_id}"):
        load_bank(tmp_path / "bank", token_lm=other)
    with pytest.raises(ValueError, match="needs that LM"):
        SeparationProtocol(menu[0])
    with pytest.raises(ValueError, match="token_lm"):
        SeparationProtocolConfig(vocab_size=V, budget=32, source_model="lm")
    with pytest.raises(ValueError, match="do not match"):
        SeparationProtocol(dataclasses.replace(menu[0], token_lm="sha256:0000000000000000"), source=lm_source)


def test_a_token_model_saves_the_config_it_always_did(sources, train_passages, tmp_path):
    proto = make(sources, train_passages, budget=40, source_model="bigram", modulation="16qam", rate=2 / 3)
    proto.save(tmp_path)
    assert "token_lm" not in json.loads((tmp_path / "protocol.json").read_text())["config"]


def test_the_fine_menu_holds_the_standard_rates_and_more():
    from protocols.separation import FINE_RATES, MCS_MENUS

    assert set(MCS_RATES) <= set(FINE_RATES) and MCS_MENUS["standard"] == MCS_RATES
    assert min(FINE_RATES) == 0.2 and max(FINE_RATES) == 0.9 and len(FINE_RATES) == 18
    for n in (16, 32):
        standard = {(c.code, c.info_bits(), c.modulation) for code in ("ldpc", "polar")
                    for c in mcs_menu(n, vocab_size=V, source_model="bigram", code=code)}
        fine = {(c.code, c.info_bits(), c.modulation) for code in ("ldpc", "polar")
                for c in mcs_menu(n, vocab_size=V, source_model="bigram", code=code, rates=FINE_RATES)}
        assert standard < fine and len(fine) >= 2 * len(standard)


# ---- the huffman header: T under a code of its own distribution -----------------------------------


@pytest.mark.parametrize("kind", ["bigram", "lm"])
def test_a_huffman_header_carries_more_tokens_and_round_trips(sources, lm_source, train_passages, heldout, kind,
                                                             tmp_path, monkeypatch):
    import protocols.separation as separation
    from protocols.separation import fit_bank, load_bank, save_bank

    if kind == "lm":  # T's law from 128 frames, not 512: the LM codes each one (most of this test's time)
        monkeypatch.setattr(separation, "HEADER_FIT_PASSAGES", 128)
    sample = separation.HEADER_FIT_PASSAGES
    source = lm_source if kind == "lm" else sources["bigram"]
    extra = {"token_lm": lm_source.weights_id} if kind == "lm" else {}
    configs = [SeparationProtocolConfig(vocab_size=V, budget=32, source_model=kind, modulation=m, rate=r, **extra)
               for m, r in (("16qam", 0.75), ("64qam", 0.5))]
    fixed = fit_bank(configs, source, train_passages[:600])
    huff = fit_bank([dataclasses.replace(c, header_code="huffman") for c in configs], source, train_passages[:600])
    ids = heldout[:16] if kind == "lm" else heldout[:64]
    for f, p in zip(fixed, huff, strict=True):
        assert p.t_counts.shape == (L + 1,) and p.t_counts.sum() == sample
        assert p.header.lengths.min() <= 3 < np.ceil(np.log2(L + 1))  # the likely T cost a few bits, not 6
        T_fixed, T = f.tokens_in_frame(ids), p.tokens_in_frame(ids)
        assert T.mean() > T_fixed.mean()  # the bits saved carry tokens
        out = p.decode(p.encode(ids), channel=AWGN(0.0))
        for i in range(len(ids)):
            np.testing.assert_array_equal(out[i], source.fill(ids[i, : T[i]], L))
        garbage = np.random.default_rng(0).integers(0, 2, size=(20, p.k))
        got = p.decode_frames(garbage)
        assert got.shape == (20, L) and got.min() >= 0 and got.max() < V
    save_bank(huff, tmp_path / "bank")
    loaded = list(load_bank(tmp_path / "bank", token_lm=lm_source if kind == "lm" else None).values())
    for p, q in zip(huff, loaded, strict=True):
        np.testing.assert_array_equal(q.t_counts, p.t_counts)
        np.testing.assert_array_equal(q.encode(ids), p.encode(ids))
    saved = json.loads((tmp_path / "bank" / "separation_bank.json").read_text())
    assert saved["entries"]["ldpc-r0.75-16qam"]["header_code"] == "huffman" and len(saved["t_counts"]) == 2
    with pytest.raises(ValueError, match="header_bits"):
        SeparationProtocolConfig(vocab_size=V, budget=32, header_code="huffman", header_bits=8)
    with pytest.raises(ValueError, match="header_code"):
        SeparationProtocolConfig(vocab_size=V, budget=32, header_code="gamma")


def test_an_lm_bank_mixed_with_the_bigram_saves_its_pairs_and_mix(lm_source, train_passages, heldout, tmp_path):
    from protocols.lm_source import LMSourceModel
    from protocols.separation import fit_bank, load_bank, save_bank

    mixed = LMSourceModel(lm_source.model, mix=0.5).fit(train_passages)
    menu = mcs_menu(32, vocab_size=V, source_model="lm", code="ldpc", token_lm=mixed.weights_id, lm_mix=0.5)[:2]
    bank = fit_bank(menu, mixed, train_passages)
    save_bank(bank, tmp_path)
    assert json.loads((tmp_path / "protocol.json").read_text())["config"]["lm_mix"] == 0.5
    loaded = list(load_bank(tmp_path, token_lm=LMSourceModel(lm_source.model, mix=0.5)).values())
    ids = heldout[:4]
    for p, q in zip(bank, loaded, strict=True):
        assert q.source.mix == 0.5 and q.source.bigram is not None
        np.testing.assert_array_equal(q.encode(ids), p.encode(ids))
    with pytest.raises(ValueError, match="do not match"):  # an LM source of another mix
        load_bank(tmp_path, token_lm=lm_source)
    with pytest.raises(ValueError, match="lm_mix"):
        SeparationProtocolConfig(vocab_size=V, budget=32, source_model="bigram", lm_mix=0.5)
