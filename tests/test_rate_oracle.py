"""experiments.reconstruction's oracle rate adaptation rests on channel state only: the pick plays validation
passages with noise seeded from the channel state, never the trial's test passages or seed, and is cached per state.

No Ray and no model: a fake speaker/listener pair whose MCS ``...#r<r>`` sends the first n // r token ids, each
repeated r times (more repeats: fewer tokens, each surer under noise)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import experiments.reconstruction_trials as rec  # where the trials read their tokenizer
from experiments.reconstruction import COLUMNS, oracle_key, pick_rate, play_trial

L, N_USES, V = 8, 8, 100
MENU = [f"separation@{N_USES}#r{r}" for r in (1, 2, 4)]


class FakeAgent:
    """Speaker and listener at once; counts decodes and records every target it encodes."""

    def __init__(self) -> None:
        self.decodes = 0
        self.encoded: list[np.ndarray] = []
        self.bounds: list[np.ndarray] = []

    @staticmethod
    def _repeats(key: str) -> int:
        return int(key.rsplit("#r", 1)[1])

    def encode(self, key, target, channel=None):
        self.encoded.append(np.asarray(target).copy())
        r = self._repeats(key)
        sent = np.repeat(np.asarray(target)[:, : N_USES // r], r, axis=1).astype(np.float32) / 10
        return np.pad(sent, ((0, 0), (0, N_USES - sent.shape[1])))

    def decode_bound(self, key, received, channel, gain, sent):
        """The oracle's fast rule: shown what was sent (recorded), decodes as ``decode``."""
        self.bounds.append(np.asarray(sent).copy())
        self.decodes -= 1  # counted apart
        return self.decode(key, received, channel, gain)

    def decode(self, key, received, channel, gain):
        self.decodes += 1
        r = self._repeats(key)
        k = N_USES // r
        means = np.asarray(received)[:, : k * r].reshape(len(received), k, r).mean(axis=2)
        ids = np.zeros((len(received), L), np.int64)
        ids[:, :k] = np.clip(np.rint(means * 10), 0, V - 1)
        return ids


class FakeTokenizer:
    def batch_decode(self, rows):
        return [" ".join(map(str, r)) for r in rows]


@pytest.fixture(autouse=True)
def fake_tokenizer(monkeypatch):
    monkeypatch.setattr(rec, "cached_tokenizer", lambda path: FakeTokenizer())


def passages(low: int, high: int, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, size=(count, L)).astype(np.int32)


VALIDATION = passages(0, 50, 64, seed=1)  # ids < 50: every passage the oracle may play
TEST = passages(50, V, 64, seed=2)  # ids >= 50: the trial's passages


def settings(oracle_dir=None) -> dict:
    return {"episodes": 32, "batch_size": 16, "passage_length": L, "vocab_size": V, "K": 4,
            "variants": {f"separation@{N_USES}": MENU}, "bits_sent": dict.fromkeys(MENU, 64),
            "entropy_bits_per_token": 5.0, "fill_accuracy": 0.0, "guess": 0, "checkpoint": "fake",
            "erasure_p": 0.1, "fading_block": None, "tokenizer_path": "unused", "oracle_passages": VALIDATION,
            "oracle_dir": oracle_dir}


def spec(seed: int = 0, sigma: float = 0.05, channel: str = "awgn") -> dict:
    return {"protocol": "separation", "channel": channel, "rho": 1.0, "channel_uses": N_USES, "sigma": sigma,
            "seed": seed, "index": 0}


def test_the_oracle_never_plays_test_passages():
    agent = FakeAgent()
    row = play_trial(spec(), agent, agent, TEST, settings())
    picked = agent.encoded[:-2]  # the last 2 batches (32 / 16) are the trial's own
    assert len(picked) == len(MENU) * 4  # 64 validation passages in batches of 16, for every MCS
    assert all((t < 50).all() for t in picked)  # validation passages only
    np.testing.assert_array_equal(np.concatenate(picked[:4]), VALIDATION)  # each once, in order
    assert all((t >= 50).all() for t in agent.encoded[-2:])  # then the trial plays its test passages
    # other test passages (all of them changed): the same pick on the same validation accuracy
    other = FakeAgent()
    again = play_trial(spec(), other, other, passages(50, V, 64, seed=99), settings())
    assert (again["mcs"], again["mcs_val_accuracy"]) == (row["mcs"], row["mcs_val_accuracy"])
    assert row["mcs"] in {m.split("#", 1)[1] for m in MENU} and 0 <= row["mcs_val_accuracy"] <= 1
    assert list(row) == COLUMNS


def test_the_pick_depends_on_channel_state_not_on_the_trial_seed():
    a, b = FakeAgent(), FakeAgent()
    first, second = pick_rate(spec(seed=0), a, a, settings()), pick_rate(spec(seed=7), b, b, settings())
    assert first == second
    # another channel state is another pick, played on its own noise
    assert pick_rate(spec(sigma=0.3), a, a, settings())[1] < first[1]
    assert pick_rate(spec(channel="erasure"), a, a, settings())[1] < first[1]


def test_the_oracle_key_holds_what_shapes_the_channel():
    s = settings()
    assert oracle_key("separation", "awgn", 0.5, 16, s) == "separation@16-awgn-s0.5"
    assert oracle_key("separation", "erasure", 0.5, 16, s) == "separation@16-erasure-s0.5-e0.1"
    assert oracle_key("separation", "rayleigh", 0.5, 16, {**s, "fading_block": 4}) == "separation@16-rayleigh-s0.5-fb4"
    assert len({oracle_key("separation", "awgn", sg, n, s) for sg in (0.1, 0.2) for n in (8, 16)}) == 4


def test_a_cached_pick_is_not_replayed_and_rows_match(tmp_path):
    first = FakeAgent()
    row = play_trial(spec(seed=0), first, first, TEST, settings(str(tmp_path)))
    assert first.decodes == len(MENU) * 4 + 2  # the menu on 64 validation passages, then 2 trial batches
    (kept,) = tmp_path.glob("*.json")
    assert kept.name == "separation@8-awgn-s0.05.json"
    assert json.loads(kept.read_text())["menu"] == MENU
    second = FakeAgent()
    other_seed = play_trial(spec(seed=1), second, second, TEST, settings(str(tmp_path)))
    assert second.decodes == 2  # the trial's own batches only: the pick came from the cache
    assert (other_seed["mcs"], other_seed["mcs_val_accuracy"]) == (row["mcs"], row["mcs_val_accuracy"])
    # a resumed run (the pick read back) writes the row byte for byte as a fresh one
    fresh = FakeAgent()
    uncached = play_trial(spec(seed=0), fresh, fresh, TEST, settings())
    resumed = play_trial(spec(seed=0), FakeAgent(), FakeAgent(), TEST, settings(str(tmp_path)))
    assert json.dumps(resumed) == json.dumps(uncached) == json.dumps(row)


def test_one_choice_is_no_pick():
    s = settings()
    s["variants"] = {f"separation@{N_USES}": MENU[:1]}
    agent = FakeAgent()
    key, accuracy = pick_rate(spec(), agent, agent, s)
    assert key == MENU[0] and math.isnan(accuracy) and agent.decodes == 0


@pytest.mark.parametrize("protocol,rule,fast", [("separation-lm", "fill", True), ("separation-lm", "exact", False),
                                                ("separation", "fill", False)])
def test_only_separation_lm_s_oracle_takes_the_fast_rule(protocol, rule, fast):
    """separation-lm's oracle with ``lm_oracle_rule`` fill plays through ``decode_bound`` (shown the validation
    passages it sent); the trial itself, the exact rule and the bigram's oracle always decode every frame."""
    s = settings()
    s["variants"] = {f"{protocol}@{N_USES}": [m.replace("separation@", f"{protocol}@") for m in MENU]}
    s["bits_sent"] = dict.fromkeys(s["variants"][f"{protocol}@{N_USES}"], 64)
    s["lm_oracle_rule"] = rule
    agent = FakeAgent()
    row = play_trial({**spec(), "protocol": protocol}, agent, agent, TEST, s)
    assert row["mcs"] in {m.split("#", 1)[1] for m in MENU}
    if fast:
        assert len(agent.bounds) == len(MENU) * 4 and agent.decodes == 2  # the trial's 2 batches decoded
        np.testing.assert_array_equal(np.concatenate(agent.bounds[:4]), VALIDATION)
    else:
        assert agent.bounds == [] and agent.decodes == len(MENU) * 4 + 2
