"""Message <-> channel-symbol protocols with fair power and bandwidth accounting, and the metrics.

``Protocol`` is the interface (``fit``, ``encode``, ``decode``, ``score``, ``channel_uses``,
``save``/``load``); ``TokenProtocol``, ``VectorProtocol`` and ``QuantizedVectorProtocol``
implement it. See docs/protocols.md for the fairness rules as implemented.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protocols.base import Protocol, cyclic_combine, cyclic_fill
from protocols.metrics import (
    binary_entropy,
    capacity_bits,
    efficiency,
    fano_delivered_bits,
    snr,
    snr_db,
    wilson_interval,
)
from protocols.quantized import QuantizedVectorProtocol, QuantizedVectorProtocolConfig
from protocols.token import TokenProtocol, TokenProtocolConfig
from protocols.vector import VectorProtocol, VectorProtocolConfig

__all__ = [
    "Protocol",
    "QuantizedVectorProtocol",
    "QuantizedVectorProtocolConfig",
    "TokenProtocol",
    "TokenProtocolConfig",
    "VectorProtocol",
    "VectorProtocolConfig",
    "binary_entropy",
    "capacity_bits",
    "cyclic_combine",
    "cyclic_fill",
    "efficiency",
    "fano_delivered_bits",
    "load_protocol",
    "make_protocol",
    "snr",
    "snr_db",
    "wilson_interval",
]


PROTOCOL_NAMES = ("vector", "token", "quantized")


def make_protocol(name: str, autoencoder: Any, *, budget: int, quantized_bits: int = 4) -> Protocol:
    """A fresh (unfitted) protocol by name, sized for `budget` channel uses.

    The token protocol uses the autoencoder's vocabulary (the tokenizer's); the latent ones its codes.
    """
    if name == "vector":
        return VectorProtocol(autoencoder, VectorProtocolConfig(budget=budget))
    if name == "token":
        return TokenProtocol(TokenProtocolConfig(vocab_size=autoencoder.config.vocab_size, budget=budget))
    if name == "quantized":
        return QuantizedVectorProtocol(autoencoder, QuantizedVectorProtocolConfig(bits_per_dim=quantized_bits,
                                                                                  budget=budget))  # fmt: skip
    raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOL_NAMES)}")


def load_protocol(directory: str | Path, autoencoder: Any | None = None) -> Protocol:
    """Load any saved protocol; the latent ones need the autoencoder they were fitted with."""
    kind = Protocol.read_config(directory)["protocol"]
    if kind == TokenProtocol.name:
        return TokenProtocol.load(directory)
    classes = {VectorProtocol.name: VectorProtocol, QuantizedVectorProtocol.name: QuantizedVectorProtocol}
    if kind not in classes:
        raise ValueError(f"unknown protocol {kind!r} in {directory}; known: token, {', '.join(classes)}")
    if autoencoder is None:
        raise ValueError(f"loading a {kind!r} protocol needs the autoencoder it was fitted with")
    return classes[kind].load(directory, autoencoder)
