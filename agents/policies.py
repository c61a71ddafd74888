"""Speaker and listener policies: what each agent does with its observation in the referential game.

A policy wraps an agent (a ``CALMAgent`` actor handle, or a plain ``CALMAgentCore`` for
single-process use) and one protocol. It maps the env's observation to the env's action:

    SpeakerPolicy.act(target (B, L))                              -> symbols (B, n) float32
    ListenerPolicy.act({"candidates": (B, C, L), "received": (B, n), "gain": (B, n)})
        -> (indices (B,), decoded (B, L) or None)

The env lives with the caller; only numpy arrays cross to the actors (DESIGN.md section 2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agents.core import RECEIVERS, Receiver

__all__ = ["ListenerPolicy", "SpeakerPolicy", "call"]


#: how often a call to an actor that Ray reports temporarily unavailable is repeated (about a minute in all)
UNAVAILABLE_RETRIES = 30


def call(agent: Any, method: str, *args: Any) -> Any:
    """Run ``agent.method(*args)`` on an actor handle (and wait) or on a local agent object.

    An actor Ray reports *temporarily* unavailable (its node lost or restarting: ``ActorUnavailableError``, "the
    task may or may not have been executed") is called again, with a growing pause, up to ``UNAVAILABLE_RETRIES``
    times: an agent's methods are functions of their arguments (encode, decode, score a batch), so running one
    twice changes nothing. Ray's own task retries (``max_task_retries``) cover an actor that died and restarted."""
    fn = getattr(agent, method)
    remote = getattr(fn, "remote", None)
    if remote is None:
        return fn(*args)
    import time

    import ray

    for attempt in range(UNAVAILABLE_RETRIES + 1):
        try:
            return ray.get(remote(*args))
        except ray.exceptions.ActorUnavailableError:
            if attempt == UNAVAILABLE_RETRIES:
                raise
            time.sleep(min(2.0, 0.05 * 2**attempt))
    raise AssertionError("unreachable")


@dataclass
class SpeakerPolicy:
    """Encode the target passage with a protocol: the speaker's whole policy."""

    agent: Any
    """a CALMAgent actor handle or a CALMAgentCore"""
    protocol: str
    """name of a protocol the agent loaded"""
    channel: Any = None
    """the channel model the speaker is told (SNR-adaptive protocols use it; None: not told)"""

    def act(self, target: np.ndarray) -> np.ndarray:
        """``target (B, L)`` token ids -> channel symbols ``(B, n)`` float32 with unit mean power."""
        return np.asarray(call(self.agent, "encode", self.protocol, target, self.channel), dtype=np.float32)


@dataclass
class ListenerPolicy:
    """Pick the candidate the received symbols most likely encode (soft) or best match when decoded (hard)."""

    agent: Any
    """a CALMAgent actor handle or a CALMAgentCore"""
    protocol: str
    """name of a protocol the agent loaded (the speaker's)"""
    receiver: Receiver = "soft"
    """soft: maximum likelihood over candidates; hard: decide in the protocol's domain, pick the nearest"""
    channel: Any = None
    """the channel model the receiver is told (``log_likelihood``); None: AWGN"""

    def __post_init__(self) -> None:
        if self.receiver not in RECEIVERS:
            raise ValueError(f"receiver must be one of {RECEIVERS}, got {self.receiver!r}")

    def act(self, observation: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Listener observation -> ``(indices (B,) int64, decoded ids (B, L) int64 or None)``.

        The observation's ``gain (B, n)`` (fading gains: the receiver's channel-state information), when
        present, reaches the receiver with ``channel``.
        """
        received = observation["received"]  # (B, n)
        candidates = observation["candidates"]  # (B, C, L)
        gain = observation.get("gain")  # (B, n) or None
        choice, decoded = call(self.agent, "listen", self.protocol, self.receiver, received, candidates,
                               self.channel, gain)
        return np.asarray(choice, dtype=np.int64), None if decoded is None else np.asarray(decoded, dtype=np.int64)
