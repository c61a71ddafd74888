"""Emergent protocols: a speaker and a listener that learn to talk through the noisy channel (issue 31, point 1).

The referential game (DESIGN.md section 2) with learned agents on top of fixed item features (the frozen CALM
autoencoder's latent means of a passage, ``protocols.latent.encode_means``, flattened; or a bag of token ids as
the control):

    target features (B, D) [+ mean of the distractors' features] [+ SNR]
      -> Speaker MLP -> continuous: n real symbols, each message scaled to sum x^2 = n
                     -> discrete: m symbols over V = 2^b -> b bits each (MSB first) -> BPSK (bit 0 -> +1)
      -> environments.torch_channels.simulate_channel (awgn | rayleigh | erasure; differentiable in x)
      -> Listener: message MLP on [y, gain, SNR?] -> e; candidate MLP on each of C candidates -> e
      -> scores (B, C) = dot products; softmax over C is the choice distribution

Fairness (DESIGN.md section 3). Power: every message has power exactly 1 per channel use (continuous: divided
by its own root mean square, so sum x^2 = n; discrete: BPSK symbols are +-1). A constant per-message energy
carries nothing in its scale, so this is the average-power rule met with equality by every message, not a
per-message leak. Channel uses: an uncoded discrete message costs m * b uses, so a comparison with a continuous
message of n uses sets m * b = n (``EmergentConfig`` enforces it). A coded discrete message (``link`` = ldpc or
polar) carries k = m * b information bits in n coded BPSK symbols (``protocols.coded.CodedLink``, Sionna's 5G
codes, rate k / n): the channel sees the code's unit-power symbols, the listener hears the k decoded bits as +-1
(``protocols.emergent_link.transmit``), and training passes gradients straight through the decoder (the
decoded bit errors act as sign flips on the sent bits).

Training the discrete speaker (``Speaker.sample``):
- ``gumbel``: straight-through Gumbel-softmax at temperature tau (Jang et al. 2017, arXiv:1611.01144); the
  hard one-hot goes to its BPSK pattern by a matmul with the (V, b) table of +-1, so gradients reach the
  logits through the channel and the listener;
- ``reinforce``: categorical samples with their log-probabilities and entropies (Williams 1992), for a
  score-function gradient with a baseline and an entropy bonus (``protocols.emergent_train``);
- ``greedy``: the argmax symbols, for evaluation.

Checkpoints: ``save_pair``/``load_pair`` write and read ``model.safetensors`` (both agents) + ``config.json``
(the config and the training history); never pickle.

Items are standardised per dimension with fixed statistics of the training bank (buffers ``feature_mean``,
``feature_std`` set by ``set_feature_stats``), never per batch.

Dim letters: B games, C candidates, D feature size, n channel uses, m symbols per message, b bits per symbol,
V = 2^b vocabulary, h hidden width, e embedding size.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import save as safetensors_bytes
from torch import nn

from calm.checks import check_numbers, in_range, positive_ints
from calm.config import DictConfig
from calm.files import DamagedFileError, atomic_write_bytes, atomic_write_text, read_json
from calm.integrity import check_tensors, read_safetensors
from protocols.coded import code_limit_problem

__all__ = [
    "LINKS",
    "SAMPLE_MODES",
    "SNR_INPUT_DB",
    "EmergentConfig",
    "Listener",
    "Message",
    "Speaker",
    "bpsk_table",
    "load_pair",
    "save_pair",
    "snr_input",
]

MessageKind = Literal["continuous", "discrete"]
#: how discrete bits reach the channel: as they are, or under a 5G code (``protocols.coded.CODES``)
LINKS: tuple[str, ...] = ("uncoded", "ldpc", "polar")
SampleMode = Literal["gumbel", "reinforce", "greedy"]
SAMPLE_MODES: tuple[str, ...] = ("gumbel", "reinforce", "greedy")
#: the SNR an agent is told is clamped to this range in dB and scaled to [-1, 1] (inf = noiseless -> 1)
SNR_INPUT_DB: tuple[float, float] = (-30.0, 50.0)
# a feature dimension constant over the bank is divided by this instead of 0
STD_FLOOR = 1e-6
# keeps log(-log(u)) finite for the Gumbel draws
_TINY = 1e-10
# a pair's checkpoint: config.json names this type
MODEL_TYPE = "emergent_pair"
FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------
# blocks


def mlp(d_in: int, h: int, d_out: int, num_layers: int) -> nn.Sequential:
    """in -> (Linear h -> ReLU) x num_layers -> Linear out."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        layers += [nn.Linear(d_in if i == 0 else h, h), nn.ReLU()]
    layers.append(nn.Linear(h if num_layers else d_in, d_out))
    return nn.Sequential(*layers)


def bpsk_table(bits: int) -> torch.Tensor:
    """(V, b) float table: row v is symbol v's b bits, MSB first, as BPSK (bit 0 -> +1, bit 1 -> -1), as
    ``protocols.token``.

    >>> bpsk_table(2).tolist()
    [[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]]
    """
    shifts = torch.arange(bits - 1, -1, -1)
    bit = (torch.arange(2**bits)[:, None] >> shifts) & 1  # (V, b)
    return (1 - 2 * bit).float()


def snr_input(snr_db: torch.Tensor) -> torch.Tensor:
    """(B,) SNR in dB -> (B, 1): clamped to ``SNR_INPUT_DB`` and scaled to [-1, 1] (what a told agent sees)."""
    lo, hi = SNR_INPUT_DB
    return ((snr_db.clamp(lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2))[:, None]


# ----------------------------------------------------------------------------------------------------------
# config


@dataclass
class EmergentConfig(DictConfig):
    """Hyperparameters of a speaker-listener pair."""

    feature_dim: int = 128
    """D: size of an item's feature vector (flattened CALM latent means, or a bag of token ids)"""
    kind: MessageKind = "continuous"
    """continuous: n real symbols; discrete: m symbols over V = 2^b, sent as BPSK bits"""
    channel_uses: int = 8
    """n: real channel symbols per message (discrete uncoded: must equal message_len * vocab_bits)"""
    vocab_bits: int = 1
    """b: bits per discrete symbol, V = 2^b (discrete only)"""
    message_len: int = 8
    """m: discrete symbols per message (discrete only)"""
    hidden_size: int = 128
    """h: width of every MLP"""
    num_layers: int = 1
    """hidden layers of every MLP (one learned 2-candidate games better than two: fewer collapsed messages)"""
    embed_size: int = 64
    """e: size of the listener's message and candidate embeddings"""
    sees_distractors: bool = False
    """the speaker also sees the mean of the distractors' features (never their order)"""
    told_snr: bool = False
    """both agents are told each message's SNR (``snr_input``)"""
    tau: float = 1.0
    """Gumbel-softmax temperature (gumbel training only)"""
    entropy_coef: float = 0.01
    """weight of the speaker's entropy bonus (reinforce training only)"""
    reward: Literal["log_prob", "success"] = "log_prob"
    """REINFORCE reward: the listener's log-probability of the target, or 1 for a right choice"""
    link: Literal["uncoded", "ldpc", "polar"] = "uncoded"
    """discrete only: uncoded (the m b bits are the n BPSK channel symbols) or a 5G code of ``protocols.coded``
    (k = m b information bits -> n coded BPSK symbols; the listener hears the k decoded bits)"""

    def __post_init__(self) -> None:
        for name, allowed in (("kind", ("continuous", "discrete")), ("reward", ("log_prob", "success"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"EmergentConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        positive_ints(self, "feature_dim", "channel_uses", "vocab_bits", "message_len", "hidden_size", "embed_size")
        positive_ints(self, "num_layers", minimum=0)
        in_range("vocab_bits", self.vocab_bits, 1, 16)  # V = 2^b logits per symbol
        if self.link not in LINKS:
            raise ValueError(f"EmergentConfig.link must be one of {LINKS}, got {self.link!r}")
        if self.link != "uncoded":
            if self.kind != "discrete":
                raise ValueError(f"EmergentConfig.link={self.link!r} codes bits: it needs kind='discrete'")
            problem = code_limit_problem(self.link, self.message_len * self.vocab_bits, self.channel_uses)
            if problem:
                raise ValueError(f"EmergentConfig.link: k = message_len * vocab_bits = {self.message_len} * "
                                 f"{self.vocab_bits} information bits in channel_uses={self.channel_uses} coded "
                                 f"bits: {problem}")
        elif self.kind == "discrete" and self.message_len * self.vocab_bits != self.channel_uses:
            raise ValueError(f"EmergentConfig: discrete messages use message_len * vocab_bits = {self.message_len} * "
                             f"{self.vocab_bits} channel uses, which must equal channel_uses={self.channel_uses}")
        for name in ("sees_distractors", "told_snr"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"EmergentConfig.{name} must be a bool, got {getattr(self, name)!r}")
        in_range("tau", self.tau, 0.0, None, low_open=True)
        in_range("entropy_coef", self.entropy_coef, 0.0, None)
        check_numbers(self)  # last: finite numbers (tau = inf), ints that are ints

    @property
    def vocab_size(self) -> int:
        """V = 2^b."""
        return 2**self.vocab_bits

    @property
    def heard_size(self) -> int:
        """Values the listener hears per message: n channel outputs, or the k decoded bits of a coded link."""
        return self.channel_uses if self.link == "uncoded" else self.message_len * self.vocab_bits


# ----------------------------------------------------------------------------------------------------------
# agents


class _Standardise(nn.Module):
    """Per-dimension standardisation with fixed statistics (buffers, saved with the model)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(d))
        self.register_buffer("feature_std", torch.ones(d))

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the statistics (from the training bank): (D,) each; std floored at ``STD_FLOOR``."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(STD_FLOOR))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.feature_mean) / self.feature_std


@dataclass
class Message:
    """What ``Speaker.forward`` returns for B games."""

    x: torch.Tensor
    """(B, n) channel symbols, power 1 per use (discrete: +-1)"""
    symbols: torch.Tensor | None = None
    """(B, m) int64 discrete symbols (None for continuous messages)"""
    log_prob: torch.Tensor | None = None
    """(B,) log-probability of the symbols under the speaker (discrete only)"""
    entropy: torch.Tensor | None = None
    """(B,) entropy of the speaker's symbol distributions, summed over the m positions (discrete only)"""


class Speaker(nn.Module):
    """Target features (B, D) [+ distractors (B, C-1, D)] [+ SNR (B,)] -> a ``Message`` of n channel symbols."""

    def __init__(self, config: EmergentConfig) -> None:
        super().__init__()
        self.config = c = config
        self.standardise = _Standardise(c.feature_dim)
        d_in = c.feature_dim * (2 if c.sees_distractors else 1) + (1 if c.told_snr else 0)
        d_out = c.channel_uses if c.kind == "continuous" else c.message_len * c.vocab_size
        self.net = mlp(d_in, c.hidden_size, d_out, c.num_layers)
        self.register_buffer("table", bpsk_table(c.vocab_bits), persistent=False)  # (V, b)

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the feature standardisation (``_Standardise.set_feature_stats``)."""
        self.standardise.set_feature_stats(mean, std)

    def raw(self, target: torch.Tensor, distractors: torch.Tensor | None = None,
            snr_db: torch.Tensor | None = None) -> torch.Tensor:
        """The network's output: (B, n) raw symbols (continuous) or (B, m, V) logits (discrete)."""
        c = self.config
        B = target.shape[0]
        parts = [self.standardise(target)]
        if c.sees_distractors:
            if distractors is None:
                raise ValueError("this speaker sees the distractors (sees_distractors=True): pass distractors")
            # mean-pool: the speaker sees which items compete, not where they sit
            parts.append(self.standardise(distractors).mean(1))
        if c.told_snr:
            if snr_db is None:
                raise ValueError("this speaker is told the SNR (told_snr=True): pass snr_db")
            parts.append(snr_input(snr_db.to(target.dtype)))
        out = self.net(torch.cat(parts, dim=-1))
        return out if c.kind == "continuous" else out.view(B, c.message_len, c.vocab_size)

    def sample(self, logits: torch.Tensor, mode: SampleMode, *, generator: torch.Generator | None = None,
               tau: float | None = None) -> Message:
        """Discrete symbols from logits (B, m, V) and their channel symbols.

        ``gumbel``: straight-through Gumbel-softmax (forward: the hard one-hot; backward: the softmax of
        (logits + Gumbel noise) / tau); ``reinforce``: categorical samples (no gradient through x);
        ``greedy``: argmax. Noise comes from ``generator``. log_prob and entropy are filled in every mode.
        """
        if mode not in SAMPLE_MODES:
            raise ValueError(f"unknown sample mode {mode!r}; choose from {SAMPLE_MODES}")
        B, m, V = logits.shape
        log_p = F.log_softmax(logits, dim=-1)  # (B, m, V)
        entropy = -(log_p.exp() * log_p).sum(-1).sum(-1)  # (B,)
        if mode == "gumbel":
            u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
            g = -torch.log(-torch.log(u + _TINY) + _TINY)
            soft = F.softmax((logits + g) / (tau if tau is not None else self.config.tau), dim=-1)
            symbols = soft.argmax(-1)  # (B, m)
            hard = F.one_hot(symbols, V).to(soft.dtype)
            onehot = hard - soft.detach() + soft  # straight-through: hard forward, soft gradient
        else:
            if mode == "reinforce":
                probs = log_p.detach().exp().reshape(B * m, V)
                symbols = torch.multinomial(probs, 1, generator=generator).view(B, m)
            else:
                symbols = logits.argmax(-1)
            onehot = F.one_hot(symbols, V).to(logits.dtype).detach()
        log_prob = log_p.gather(-1, symbols[..., None]).squeeze(-1).sum(-1)  # (B,)
        return Message(x=self.to_channel(onehot), symbols=symbols, log_prob=log_prob, entropy=entropy)

    def to_channel(self, onehot: torch.Tensor) -> torch.Tensor:
        """One-hot symbols (B, m, V) -> BPSK channel symbols (B, m * b); differentiable (a matmul with the table)."""
        B = onehot.shape[0]
        return (onehot @ self.table.to(onehot.dtype)).reshape(B, -1)

    def symbols_to_channel(self, symbols: torch.Tensor) -> torch.Tensor:
        """Integer symbols (B, m) -> BPSK channel symbols (B, m * b)."""
        return self.table[symbols].reshape(symbols.shape[0], -1)

    def forward(self, target: torch.Tensor, distractors: torch.Tensor | None = None,
                snr_db: torch.Tensor | None = None, *, mode: SampleMode = "greedy",
                generator: torch.Generator | None = None) -> Message:
        """A message for each of B games.

        Args:
            target: (B, D) the target's features.
            distractors: (B, C-1, D) the distractors' features (used when ``sees_distractors``).
            snr_db: (B,) the SNR each message will meet (used when ``told_snr``).
            mode: discrete sampling (``sample``); ignored for continuous messages.
            generator: RNG of the Gumbel noise or the categorical draws.

        Returns:
            A ``Message`` with x (B, n) at power 1 per channel use.
        """
        raw = self.raw(target, distractors, snr_db)
        if self.config.kind == "discrete":
            return self.sample(raw, mode, generator=generator)
        # each message divided by its own RMS: sum x^2 = n exactly (module docstring: the scale carries nothing)
        x = raw / raw.pow(2).mean(-1, keepdim=True).add(_TINY).sqrt()
        return Message(x=x)


class Listener(nn.Module):
    """Received values (B, n) [+ gain (B, n)] [+ SNR (B,)] and candidates (B, C, D) -> scores (B, C)."""

    def __init__(self, config: EmergentConfig) -> None:
        super().__init__()
        self.config = c = config
        self.standardise = _Standardise(c.feature_dim)
        # message input: y, the fading gain the receiver is told (ones off rayleigh), the SNR when told
        d_msg = 2 * c.heard_size + (1 if c.told_snr else 0)
        self.message_net = mlp(d_msg, c.hidden_size, c.embed_size, c.num_layers)
        self.candidate_net = mlp(c.feature_dim, c.hidden_size, c.embed_size, c.num_layers)

    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the feature standardisation (``_Standardise.set_feature_stats``)."""
        self.standardise.set_feature_stats(mean, std)

    def forward(self, received: torch.Tensor, candidates: torch.Tensor, *, gain: torch.Tensor | None = None,
                snr_db: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of the C candidates of each of B games.

        Args:
            received: (B, n) channel output y (a coded link: (B, k) decoded bits as +-1).
            candidates: (B, C, D) candidate features, in the game's order.
            gain: (B, n) fading gain the receiver is told (ones when None).
            snr_db: (B,) SNR of each message (needed when ``told_snr``).

        Returns:
            (B, C) unnormalised log-scores; softmax over C is the choice distribution.
        """
        c = self.config
        B, n = received.shape
        if n != c.heard_size or candidates.dim() != 3 or candidates.shape[0] != B:
            raise ValueError(f"listener wants received (B, {c.heard_size}) and candidates (B, C, D), got "
                             f"{tuple(received.shape)} and {tuple(candidates.shape)}")
        parts = [received, torch.ones_like(received) if gain is None else gain.to(received.dtype)]
        if c.told_snr:
            if snr_db is None:
                raise ValueError("this listener is told the SNR (told_snr=True): pass snr_db")
            parts.append(snr_input(snr_db.to(received.dtype)))
        msg = self.message_net(torch.cat(parts, dim=-1))  # (B, e)
        cand = self.candidate_net(self.standardise(candidates))  # (B, C, e)
        return torch.einsum("be,bce->bc", msg, cand)


# ----------------------------------------------------------------------------------------------------------
# checkpoints


def _pair_state(speaker: Speaker, listener: Listener) -> dict[str, torch.Tensor]:
    """Both agents' state dicts in one, keys prefixed ``speaker.`` and ``listener.``."""
    return {f"{name}.{k}": v for name, agent in (("speaker", speaker), ("listener", listener))
            for k, v in agent.state_dict().items()}


def save_pair(directory: str | Path, cfg: EmergentConfig, speaker: Speaker, listener: Listener,
              history: list[dict[str, float]]) -> Path:
    """Write ``model.safetensors`` (``speaker.*`` and ``listener.*`` tensors) and ``config.json`` (the config
    and the history) into ``directory``, each atomically. Returns the directory."""
    directory = Path(directory)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in _pair_state(speaker, listener).items()}
    atomic_write_bytes(directory / "model.safetensors", safetensors_bytes(tensors, metadata={"format": "pt"}))
    meta = {"format_version": FORMAT_VERSION, "model_type": MODEL_TYPE, "config": cfg.to_dict(), "history": history}
    atomic_write_text(directory / "config.json", json.dumps(meta, indent=2) + "\n")
    return directory


def load_pair(directory: str | Path) -> tuple[EmergentConfig, Speaker, Listener, list[dict[str, float]]]:
    """Read a pair ``save_pair`` wrote: ``(cfg, speaker, listener, history)``, models on CPU in eval mode.

    Raises:
        FileNotFoundError: no config.json in ``directory``.
        DamagedFileError: a file that does not parse, another model type, or tensors that do not fit the config.
    """
    directory = Path(directory)
    path = directory / "config.json"
    meta = read_json(path, what="emergent pair config")
    if meta.get("model_type") != MODEL_TYPE or not isinstance(meta.get("config"), dict):
        raise DamagedFileError(path, f"not an emergent pair (model_type {meta.get('model_type')!r})")
    try:
        cfg = EmergentConfig.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise DamagedFileError(path, f"its config does not build: {exc}") from None
    speaker, listener = Speaker(cfg), Listener(cfg)
    weights = directory / "model.safetensors"
    tensors = read_safetensors(weights)
    check_tensors(weights, tensors, {k: tuple(v.shape) for k, v in _pair_state(speaker, listener).items()})
    for name, agent in (("speaker", speaker), ("listener", listener)):
        agent.load_state_dict({k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")})
        agent.eval()
    return cfg, speaker, listener, list(meta.get("history", []))
