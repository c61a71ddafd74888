"""The learned protocol: an emergent speaker-listener pair (``protocols.emergent_model``) as a ``Protocol``, so that
agents host it and every study that plays protocols through agents can play it beside the fixed ones.

    speaker:  ids (B, L) -> CALM latent means, flattened (B, D = L/K * l) -> Speaker -> x (B, n)
    listener: y (B, n), gain (B, n), candidates (B, C, L) -> their CALM features -> Listener -> scores (B, C)

The pair sees an item only through the frozen autoencoder's latent means (``encode_means``, the ``calm`` features of
``experiments.emergent``), so an agent that holds the autoencoder and this protocol can speak and listen. Messages
are at power 1 per channel use exactly (continuous: each message divided by its own RMS; discrete: BPSK +-1), and
take exactly ``budget`` channel uses (discrete, uncoded: m = n / b symbols of b bits).

Two ways to build one:
- ``LearnedProtocol(autoencoder, config).fit(train_ids)`` trains a pair on the training passages' features through
  the channel (``protocols.emergent_train.train_pair`` with the config's mode, steps, SNR range and channel);
- ``LearnedProtocol.from_pair(autoencoder, pair_dir, seq_len)`` wraps a pair another run trained
  (``experiments.emergent``'s cached pairs with calm features): its scores are the pair's own.

Receivers. The learned listener is its own receiver: it was trained on what the channel hands it, so the channel
model a ``score`` call is told is not used (the fading gains are: the listener reads them). ``score`` (soft) gives
the listener the received values ``y``; ``hard_score`` gives it the hard decisions ``sign(y)`` (one bit per channel
use: for a discrete message, the bits' hard decisions; zeros, erasures, stay 0), a receiver the pair was not trained
for. Nothing decodes to tokens (``decodes_tokens = False``). Not supported here: a coded link, a speaker that sees
the distractors, agents told the SNR (the study ``experiments.emergent`` has them).

Saving: ``protocol.json`` holds the config (training settings and the pair's ``EmergentConfig``),
``protocol.safetensors`` both agents' weights under ``speaker.*`` and ``listener.*``; never pickle.

Dim letters: B messages, C candidates, L tokens, D feature size, n channel uses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from protocols.base import ChannelModel, check_budget
from protocols.emergent_model import EmergentConfig, Listener, Speaker, _pair_state, load_pair
from protocols.latent import LatentProtocol, flat_means

__all__ = ["LEARNED_MODES", "LearnedProtocol", "LearnedProtocolConfig"]

LearnedMode = Literal["continuous", "gumbel", "reinforce"]
#: how the pair learns: continuous symbols, or discrete ones trained by Gumbel-softmax or REINFORCE
LEARNED_MODES: tuple[str, ...] = ("continuous", "gumbel", "reinforce")
_CHANNELS = ("awgn", "rayleigh", "erasure")


@dataclass
class LearnedProtocolConfig:
    """Settings of a learned protocol: its budget, the pair's shape and how ``fit`` trains it."""

    budget: int | None = None
    """n, channel uses per message (required)"""
    mode: LearnedMode = "continuous"
    """continuous messages, or discrete ones (BPSK bits) trained with gumbel or reinforce"""
    vocab_bits: int = 1
    """b, bits per discrete symbol (m = n / b symbols); discrete only"""
    hidden_size: int = 128
    """width of the pair's MLPs"""
    steps: int = 1500
    """training steps of ``fit``"""
    train_snr_db: tuple[float, ...] = (-9.0, 20.0)
    """training SNR in dB: one value, or (low, high) drawn uniformly per message"""
    train_channel: Literal["awgn", "rayleigh", "erasure"] = "awgn"
    """the channel ``fit`` trains through"""
    erasure_p: float = 0.25
    """erasure probability when training through the erasure channel"""
    train_candidates: int = 16
    """C of every training game"""
    batch_size: int = 128
    """games per training step"""
    lr: float = 3e-3
    """Adam's learning rate"""
    seed: int = 0
    """seeds the pair's initialisation and every training draw"""
    pair: dict[str, Any] = field(default_factory=dict)
    """the pair's ``EmergentConfig`` (filled by ``fit`` or ``from_pair``)"""

    def __post_init__(self) -> None:
        self.budget = check_budget(self.budget)
        if self.budget is None:
            raise ValueError("a learned protocol needs a budget (channel uses n)")
        if self.mode not in LEARNED_MODES:
            raise ValueError(f"mode must be one of {LEARNED_MODES}, got {self.mode!r}")
        if self.train_channel not in _CHANNELS:
            raise ValueError(f"train_channel must be one of {_CHANNELS}, got {self.train_channel!r}")
        for name in ("vocab_bits", "hidden_size", "steps", "train_candidates", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if name == "train_candidates" else 1):
                raise ValueError(f"{name} must be an integer >= {2 if name == 'train_candidates' else 1}, got {value!r}")
        if self.mode != "continuous" and self.budget % self.vocab_bits:
            raise ValueError(f"a discrete message of {self.vocab_bits}-bit symbols needs a budget that is a multiple "
                             f"of {self.vocab_bits}, got {self.budget}")
        self.train_snr_db = tuple(float(s) for s in self.train_snr_db)
        if len(self.train_snr_db) not in (1, 2) or any(np.isnan(s) for s in self.train_snr_db):
            raise ValueError(f"train_snr_db must be one SNR or a (low, high) range in dB, got {self.train_snr_db}")
        if not (0.0 <= self.erasure_p < 1.0 and self.lr > 0 and np.isfinite(self.lr)):
            raise ValueError(f"erasure_p must be in [0, 1) and lr finite and > 0, got {self.erasure_p}, {self.lr}")

    def emergent_config(self, feature_dim: int) -> EmergentConfig:
        """The pair's ``EmergentConfig`` for items of ``feature_dim`` features."""
        discrete = self.mode != "continuous"
        return EmergentConfig(feature_dim=feature_dim, kind="discrete" if discrete else "continuous",
                              channel_uses=self.budget, vocab_bits=self.vocab_bits,
                              message_len=self.budget // self.vocab_bits if discrete else 8,
                              hidden_size=self.hidden_size)


class LearnedProtocol(LatentProtocol):
    """An emergent speaker-listener pair over a CALM autoencoder's latent means."""

    name = "learned"
    config_class = LearnedProtocolConfig
    decodes_tokens = False
    hard_domain = "bits"

    def __init__(self, autoencoder: Any, config: LearnedProtocolConfig | None = None) -> None:
        super().__init__(autoencoder, config or LearnedProtocolConfig(budget=8))
        self.speaker: Speaker | None = None
        self.listener: Listener | None = None

    # ---- building ----

    def features(self, ids: np.ndarray) -> torch.Tensor:
        """``ids (B, L)`` -> float32 ``(B, D)``: the autoencoder's latent means of each chunk, flattened."""
        return torch.from_numpy(np.ascontiguousarray(flat_means(self.autoencoder, ids, batch_size=1024, cache=True)))

    def fit(self, train_ids: np.ndarray) -> LearnedProtocol:
        """Train the pair on the features of ``train_ids (N, L)`` through the config's channel."""
        from protocols.emergent_train import train_pair

        ids = self._check_train(train_ids)
        c = self.config
        bank = self.features(ids).numpy()
        if len(bank) < c.train_candidates:
            raise ValueError(f"training needs at least train_candidates={c.train_candidates} passages, got {len(bank)}")
        cfg = c.emergent_config(bank.shape[1])
        snr = c.train_snr_db[0] if len(c.train_snr_db) == 1 else c.train_snr_db
        speaker, listener, _ = train_pair(cfg, bank, num_candidates=c.train_candidates, steps=c.steps, snr_db=snr,
                                          batch_size=c.batch_size, channel=c.train_channel, erasure_p=c.erasure_p,
                                          seed=c.seed, mode=c.mode, lr=c.lr, progress=False)
        self._hold(cfg, speaker, listener)
        self.seq_len = ids.shape[1]
        return self

    @classmethod
    def from_pair(cls, autoencoder: Any, pair_dir: str | Path, seq_len: int) -> LearnedProtocol:
        """Wrap the pair ``save_pair`` wrote in ``pair_dir``, trained on the calm features of ``seq_len``-token
        passages of this autoencoder.

        Raises:
            ValueError: the pair's feature size is not this autoencoder's ``seq_len / K * l``, or it uses what
                this protocol does not support (a coded link, distractors seen, the SNR told).
        """
        cfg, speaker, listener, _ = load_pair(pair_dir)
        if cfg.link != "uncoded" or cfg.sees_distractors or cfg.told_snr:
            raise ValueError(f"{pair_dir}: a learned protocol plays uncoded pairs that see the target alone and are "
                             f"not told the SNR (link={cfg.link}, sees_distractors={cfg.sees_distractors}, "
                             f"told_snr={cfg.told_snr})")
        mode = "continuous" if cfg.kind == "continuous" else "gumbel"  # discrete pairs play alike however trained
        proto = cls(autoencoder, LearnedProtocolConfig(budget=cfg.channel_uses, mode=mode, vocab_bits=cfg.vocab_bits,
                                                       hidden_size=cfg.hidden_size))
        if cfg.feature_dim != proto.latent_size(seq_len):
            raise ValueError(f"{pair_dir}: the pair reads {cfg.feature_dim} features, this autoencoder gives "
                             f"{proto.latent_size(seq_len)} for {seq_len}-token passages (not its calm features?)")
        proto._hold(cfg, speaker, listener)
        proto.seq_len = int(seq_len)
        return proto

    def _hold(self, cfg: EmergentConfig, speaker: Speaker, listener: Listener) -> None:
        self.config = dataclasses.replace(self.config, pair=cfg.to_dict())
        self.speaker, self.listener = speaker.eval(), listener.eval()

    # ---- the Protocol interface ----

    def channel_uses(self, L: int) -> int:
        return self.config.budget

    def bits_sent(self, L: int) -> int | None:
        """n bits for a discrete message (m symbols of b bits); None for a continuous one."""
        return None if self.config.mode == "continuous" else self.config.budget

    def _encode(self, ids: np.ndarray) -> np.ndarray:
        self._require_fit()
        with torch.inference_mode():
            return self.speaker(self.features(ids), mode="greedy").x.numpy().astype(np.float32)

    def _decode(self, symbols: np.ndarray, channel: ChannelModel | None, gain: np.ndarray) -> np.ndarray:
        raise ValueError("the learned protocol sends no tokens: its symbols cannot be decoded to ids")

    def _listen(self, heard: np.ndarray, candidates: np.ndarray, gain: np.ndarray) -> np.ndarray:
        """The listener's scores (B, C) float64 of candidates ``(B, C, L)`` given what it hears ``(B, n)``."""
        B, C, L = candidates.shape
        cand = self.features(candidates.reshape(B * C, L)).view(B, C, -1)
        with torch.inference_mode():
            y = torch.as_tensor(heard, dtype=torch.float32)
            scores = self.listener(y, cand, gain=torch.as_tensor(gain, dtype=torch.float32))
        return scores.double().numpy()

    def score(self, symbols: np.ndarray, candidates: np.ndarray, *, channel: ChannelModel | None = None,
              gain: np.ndarray | None = None) -> np.ndarray:
        """Soft receiver: the listener's scores on the received values (the channel model is not used)."""
        y = self._check_symbols(symbols)
        return self._listen(y, self._check_candidates(candidates, y.shape[0]), self._check_gain(gain, y.shape))

    def _hard_score(self, symbols: np.ndarray, candidates: np.ndarray, channel: ChannelModel | None,
                    gain: np.ndarray) -> np.ndarray:
        return self._listen(np.sign(symbols), candidates, gain)

    # ---- saving ----

    def _stat_shapes(self, L: int) -> dict[str, tuple[int, ...]]:
        cfg = self._pair_config(L)
        return {k: tuple(v.shape) for k, v in _pair_state(Speaker(cfg), Listener(cfg)).items()}

    def _stats(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy() for k, v in _pair_state(self.speaker, self.listener).items()}

    def _pair_config(self, L: int) -> EmergentConfig:
        """The recorded pair's config, checked to read the ``L / K * l`` features of ``L``-token passages."""
        if not self.config.pair:
            raise ValueError("the config records no pair (a learned protocol is saved trained)")
        D = self.latent_size(L)
        cfg = EmergentConfig.from_dict(self.config.pair)
        if cfg.feature_dim != D or cfg.channel_uses != self.config.budget:
            raise ValueError(f"the pair reads {cfg.feature_dim} features into {cfg.channel_uses} channel uses; "
                             f"{L}-token passages give {D}, the budget is {self.config.budget}")
        return cfg

    def _set_stats(self, stats: dict[str, np.ndarray]) -> None:
        cfg = EmergentConfig.from_dict(self.config.pair)  # checked by _stat_shapes before
        speaker, listener = Speaker(cfg), Listener(cfg)
        for prefix, agent in (("speaker.", speaker), ("listener.", listener)):
            agent.load_state_dict({k[len(prefix):]: torch.from_numpy(np.array(v)) for k, v in stats.items()
                                   if k.startswith(prefix)})
        self._hold(cfg, speaker, listener)

