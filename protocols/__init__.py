"""Message <-> channel-symbol protocols with fair power and bandwidth accounting, receivers and metrics.

``Protocol`` is the interface (``fit``, ``encode``, ``decode``, ``score``, ``hard_score``,
``channel_uses``, ``bits_sent``, ``save``/``load``). The protocols, by registry name:

- ``vector``: CALM latent means, PCA to the budget, sent as analog symbols (``VectorProtocol``);
- ``quantized``: the same principal components quantised (default: their signs) -> BPSK;
- ``hash``: a keyed hash of the whole passage -> BPSK, the random-coding ideal (``HashProtocol``);
- ``coded``: hash or token bits -> Sionna 5G LDPC / Polar -> PAM/QAM, the digital baseline
  (``CodedProtocol``; Sionna is imported only when one is built);
- ``uncoded-tokens``: token ids -> bits -> BPSK with no code, the floor (``UncodedTokenProtocol``);
- ``jscc``: a learned channel adapter around the frozen CALM autoencoder (``protocols.jscc``), for
  reconstruction;
- ``lm-jscc``: a learned channel adapter whose receiver is a token language model (``protocols.lm_jscc``), for
  reconstruction;
- ``separation``: entropy coding of the token ids (constriction) -> Sionna code -> PAM, the separated
  digital link for reconstruction (``protocols.separation``; a *bank* holds one budget's MCS menu);
- ``learned``: an emergent speaker-listener pair trained through the channel on the CALM latent means
  (``protocols.learned``; ``learned-continuous``, ``learned-gumbel``, ``learned-reinforce`` name its modes).

Receivers take the channel model and the fading gains as explicit arguments. See docs/protocols.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protocols.base import (
    ChannelModel,
    Protocol,
    bpsk_llr,
    cyclic_combine,
    cyclic_fill,
    cyclic_sum,
    hamming_score,
)
from protocols.hashing import HashProtocol, HashProtocolConfig, keyed_hash_bits
from protocols.metrics import (
    best_success,
    binary_entropy,
    capacity_bits,
    efficiency,
    fano_delivered_bits,
    snr,
    snr_db,
    wilson_interval,
)
from protocols.quantized import QuantizedVectorProtocol, QuantizedVectorProtocolConfig
from protocols.token import UncodedTokenProtocol, UncodedTokenProtocolConfig
from protocols.vector import VectorProtocol, VectorProtocolConfig

__all__ = [
    "PROTOCOL_NAMES",
    "ChannelModel",
    "HashProtocol",
    "HashProtocolConfig",
    "Protocol",
    "QuantizedVectorProtocol",
    "QuantizedVectorProtocolConfig",
    "UncodedTokenProtocol",
    "UncodedTokenProtocolConfig",
    "VectorProtocol",
    "VectorProtocolConfig",
    "best_success",
    "binary_entropy",
    "bpsk_llr",
    "capacity_bits",
    "cyclic_combine",
    "cyclic_fill",
    "cyclic_sum",
    "efficiency",
    "fano_delivered_bits",
    "hamming_score",
    "keyed_hash_bits",
    "load_protocol",
    "make_protocol",
    "snr",
    "snr_db",
    "wilson_interval",
]


PROTOCOL_NAMES = ("vector", "quantized", "hash", "coded", "uncoded-tokens", "jscc", "lm-jscc", "separation", "learned")


def make_protocol(name: str, autoencoder: Any, *, budget: int, quantized_bits: int = 1,
                  coded: dict[str, Any] | None = None, hash_key: str = "latentcomm",
                  learned: dict[str, Any] | None = None) -> Protocol:
    """A fresh (unfitted) protocol by name, sized for ``budget`` channel uses.

    The token and hash protocols use the autoencoder's vocabulary (the tokenizer's); the latent ones
    its codes. ``coded`` holds ``CodedProtocolConfig`` fields (source, code, rate, modulation, ...);
    ``learned`` ``LearnedProtocolConfig`` fields (steps, train_snr_db, ...); ``learned-<mode>`` sets its mode.
    """
    V = autoencoder.config.vocab_size
    if name == "vector":
        return VectorProtocol(autoencoder, VectorProtocolConfig(budget=budget))
    if name == "uncoded-tokens":
        return UncodedTokenProtocol(UncodedTokenProtocolConfig(vocab_size=V, budget=budget))
    if name == "quantized":
        return QuantizedVectorProtocol(autoencoder, QuantizedVectorProtocolConfig(bits_per_dim=quantized_bits,
                                                                                  budget=budget))  # fmt: skip
    if name == "hash":
        return HashProtocol(HashProtocolConfig(vocab_size=V, budget=budget, key=hash_key))
    if name == "coded":
        from protocols.coded import CodedProtocol, CodedProtocolConfig

        return CodedProtocol(CodedProtocolConfig(vocab_size=V, budget=budget, key=hash_key, **(coded or {})))
    if name == "learned" or name.startswith("learned-"):
        from protocols.learned import LearnedProtocol, LearnedProtocolConfig

        mode = {"mode": name.removeprefix("learned-")} if name != "learned" else {}
        return LearnedProtocol(autoencoder, LearnedProtocolConfig(budget=budget, **{**(learned or {}), **mode}))
    if name in ("jscc", "lm-jscc", "separation"):
        raise ValueError(f"a {name} protocol is built from its own parts (protocols.{name}): a trained adapter, "
                         "or a source model and an MCS")
    raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOL_NAMES)}")


def load_protocol(directory: str | Path, autoencoder: Any | None = None) -> Protocol:
    """Load any saved protocol; the latent ones need the autoencoder they were fitted with.

    Raises:
        FileNotFoundError: ``directory`` holds no ``protocol.json``.
        DamagedFileError: it does, but it or ``protocol.safetensors`` is damaged (``protocols.saved``): the
            message names the file. Not a ValueError, so it is never taken for "cannot be built".
        ValueError: an unknown protocol, or an autoencoder other than the one it was fitted with.
    """
    kind = Protocol.read_config(directory)["protocol"]
    if kind == UncodedTokenProtocol.name:
        return UncodedTokenProtocol.load(directory)
    if kind == HashProtocol.name:
        return HashProtocol.load(directory)
    if kind == "coded":
        from protocols.coded import CodedProtocol

        return CodedProtocol.load(directory)
    if kind == "separation":
        from protocols.separation import SeparationProtocol

        return SeparationProtocol.load(directory)
    if kind == "jscc":
        from protocols.jscc import JSCCProtocol

        return JSCCProtocol.load(directory, autoencoder)
    if kind == "lm-jscc":
        from protocols.lm_jscc import LMJSCCProtocol

        return LMJSCCProtocol.load(directory)
    classes = {VectorProtocol.name: VectorProtocol, QuantizedVectorProtocol.name: QuantizedVectorProtocol}
    if kind == "learned":
        from protocols.learned import LearnedProtocol

        classes[kind] = LearnedProtocol
    if kind not in classes:
        raise ValueError(f"unknown protocol {kind!r} in {directory}; known: {', '.join(PROTOCOL_NAMES)}")
    if autoencoder is None:
        raise ValueError(f"loading a {kind!r} protocol needs the autoencoder it was fitted with")
    return classes[kind].load(directory, autoencoder)
