"""``CALMAgentCore``: one agent's state and batch methods (``agents.actor.CALMAgent`` runs it as a Ray actor).

Dimension letters: B games in a batch, C candidates per game, L tokens per passage, n channel uses.

An agent loads a checkpoint directory (``calm.checkpoint.load_pretrained``) and any number of saved
protocols (``protocols.load_protocol``) that share its model, then serves batch calls:

    encode(protocol, ids (B, L))                    -> symbols (B, n) float32
    decode(protocol, symbols (B, n))                -> ids (B, L) int64       (hard receiver)
    relay(protocol, symbols (B, n))                 -> symbols (B, n)         (decode, then re-encode)
    score(protocol, symbols, candidates (B, C, L))  -> (B, C) float64         (soft or hard scores)
    listen(protocol, receiver, symbols, candidates) -> (choice (B,), decoded (B, L))
    generate(prompts [B strings], max_tokens)       -> B continuations        (needs an lm_checkpoint)
    decode_prior(protocol, symbols, ...)            -> ids (B, L)   vector symbols, CALM prior (lm_checkpoint)
    decode_token_prior(protocol, symbols, ...)      -> ids (B, L)   uncoded token bits, token-LM prior
    decode_bound(protocol, symbols, ..., sent)      -> ids (B, L)   a separation entry, the rate oracle's fast rule
    dialogue_generate / dialogue_decode             -> a CALM's vectors and their tokens (experiments.dialogue)

Every method is a pure function of its inputs, so with ``max_restarts`` and ``max_task_retries`` a killed
agent is restarted and its in-flight calls are replayed with the same results. Checkpoints and protocols come
as paths or as files shipped through Ray's object store (``agents.shipping``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from agents.placement import _ray_gpu_ids, pick_device
from agents.shipping import FileBundle, is_path, localize

__all__ = ["AgentConfig", "CALMAgentCore", "RECEIVERS", "Receiver"]

RECEIVERS = ("soft", "hard")
Receiver = Literal["soft", "hard"]


@dataclass
class AgentConfig:
    """How an agent actor is placed and kept alive."""

    checkpoint: str
    """autoencoder checkpoint directory (``calm.checkpoint.save_pretrained`` layout)"""
    protocols: dict[str, str] = field(default_factory=dict)
    """protocol name -> directory of a saved, fitted protocol that uses this checkpoint's model"""
    lm_checkpoint: str | None = None
    """optional CALM language model (an EnergyTransformer checkpoint) for ``generate``"""
    token_lm_checkpoint: str | None = None
    """optional token baseline language model (a TokenTransformer checkpoint) for ``decode_token_prior``"""
    num_gpus: float | Literal["auto"] = "auto"
    """GPUs per agent: a number >= 0 (fractions share a GPU) or auto (1 or a share where Ray sees GPUs, else 0)"""
    num_cpus: float = 0.5
    """logical CPUs Ray reserves per agent"""
    threads: int = 1
    """torch CPU threads inside the agent (1 keeps results bit-identical across runs)"""
    max_restarts: int = 3
    """times Ray restarts a dead agent"""
    max_task_retries: int = -1
    """times a call interrupted by an agent's death is replayed on the restarted agent (-1: until the agent is back or
    gone for good, which ``max_restarts`` bounds). Not a small number: while the cluster has not yet noticed that an
    agent's node is lost (Ray's node health checks, 15-30 s by default) every try fails at once, and a few tries
    would be spent in a second, failing the trial, rather than waiting for the restart"""
    ship_files: bool = True
    """send the checkpoint and protocol files through Ray's object store, so that agents on other nodes
    (GPU workers of a cluster) need no shared filesystem; False: agents read the paths themselves"""

    def __post_init__(self) -> None:
        if self.num_gpus != "auto" and not (isinstance(self.num_gpus, (int, float)) and self.num_gpus >= 0):
            raise ValueError(f"num_gpus must be 'auto' or a number >= 0, got {self.num_gpus!r}")
        if not self.num_cpus >= 0:
            raise ValueError(f"num_cpus must be >= 0, got {self.num_cpus}")
        if not (isinstance(self.threads, int) and self.threads >= 1):
            raise ValueError(f"threads must be an integer >= 1, got {self.threads!r}")
        for name in ("max_restarts", "max_task_retries"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= -1):
                raise ValueError(f"{name} must be an integer >= -1 (-1: forever), got {value!r}")



def _lm_mix(bank: str | Path) -> float | None:
    """The bigram's weight in a saved separation bank's LM rows, or None where it codes under no LM."""
    from protocols.base import Protocol

    config = Protocol.read_config(bank)["config"]
    return float(config.get("lm_mix", 0.0)) if config.get("source_model") == "lm" else None


class CALMAgentCore:
    """The agent's state and methods; ``CALMAgent`` is this class as a Ray actor.

    Usable without Ray (tests, single-process tools): ``CALMAgentCore(checkpoint, {"vector": dir})``.
    """

    def __init__(self, checkpoint: str | FileBundle, protocols: Mapping[str, str | FileBundle], *,
                 lm_checkpoint: str | FileBundle | None = None, token_lm_checkpoint: str | FileBundle | None = None,
                 threads: int = 1, name: str = "agent", checkpoint_name: str | None = None):
        """Load the autoencoder, the protocols and (optionally) a CALM language model.

        Args:
            checkpoint: autoencoder checkpoint directory, or its files (``pack_directory``).
            protocols: protocol name -> saved protocol directory, or its files.
            lm_checkpoint: EnergyTransformer checkpoint directory (or its files) for ``generate``, or None.
            token_lm_checkpoint: TokenTransformer checkpoint directory (or its files) for ``decode_token_prior``, and
                the LM a separation bank coding under it (``source_model="lm"``) needs (one ``LMSourceModel`` for
                all of them, checked to be the LM each bank recorded).
            threads: torch CPU threads.
            name: shown in log lines.
            checkpoint_name: what ``self.checkpoint`` reports when the checkpoint comes as files.
        """
        given = [checkpoint, *protocols.values(), *(c for c in (lm_checkpoint, token_lm_checkpoint) if c is not None)]
        if not all(is_path(x) for x in given):
            # files shipped by the driver: unpack them on this node (the folder lives as long as the agent)
            self._files = tempfile.TemporaryDirectory(prefix=f"latentcomm-{name}-")
            local = Path(self._files.name)
            checkpoint = localize(checkpoint, local / "checkpoint")
            protocols = {key: localize(value, local / "protocols" / key) for key, value in protocols.items()}
            lm_checkpoint = None if lm_checkpoint is None else localize(lm_checkpoint, local / "lm")
            token_lm_checkpoint = None if token_lm_checkpoint is None else localize(token_lm_checkpoint,
                                                                                    local / "token-lm")
        import torch

        from calm.checkpoint import load_pretrained
        from protocols import load_protocol

        torch.set_num_threads(threads)
        self.name = name
        self.gpu_ids = _ray_gpu_ids()
        self.device = pick_device(self.gpu_ids, name=name)
        self.note = "falling back to CPU: torch sees no CUDA" if self.gpu_ids and self.device == "cpu" else ""
        self.gpu_ids = self.gpu_ids or []
        self.model, self.tokenizer = load_pretrained(checkpoint, device=self.device, expect="autoencoder")
        self.checkpoint = checkpoint_name or str(checkpoint)
        from protocols.separation import is_bank, load_bank

        self.protocols = {}
        lm_sources = {}  # the LM source model lm banks of one mix share (one LM pass codes a passage for all of them)
        for key, path in protocols.items():
            if is_bank(path):  # one budget's MCS menu: each entry as <key>#<mcs name>
                mix, lm_source = _lm_mix(path), None
                if token_lm_checkpoint is not None and mix is not None:
                    from protocols.lm_source import LMSourceModel

                    if mix not in lm_sources:
                        lm_sources[mix] = LMSourceModel.from_checkpoint(token_lm_checkpoint, mix=mix)
                    lm_source = lm_sources[mix]
                self.protocols.update({f"{key}#{name}": p for name, p in load_bank(path, token_lm=lm_source).items()})
            else:
                self.protocols[key] = load_protocol(path, autoencoder=self.model)
        self.lm, self.lm_tokenizer = (None, None) if lm_checkpoint is None else load_pretrained(
            lm_checkpoint, device=self.device, expect="calm")
        self.token_lm = None if token_lm_checkpoint is None else load_pretrained(
            token_lm_checkpoint, device=self.device, expect="baseline")[0]
        self.calls = 0

    # ---- placement -------------------------------------------------------------------------------

    def placement(self) -> dict[str, Any]:
        """Where this agent runs: ``gpu_ids`` Ray gave it, torch ``device``, ``pid``, ``node``, ``note``."""
        node = None
        try:
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        except Exception:  # placement is informational; never fail a caller over it
            node = None
        return {"name": self.name, "gpu_ids": [str(g) for g in self.gpu_ids], "device": self.device,
                "pid": os.getpid(), "node": node, "note": self.note}

    def pid(self) -> int:
        """The process id (tests kill it to check restarts)."""
        return os.getpid()

    # ---- batch methods ---------------------------------------------------------------------------

    def _protocol(self, protocol: str):
        if protocol not in self.protocols:
            raise ValueError(f"protocol must be one of {sorted(self.protocols)} (loaded by this agent), got {protocol!r}")
        self.calls += 1
        return self.protocols[protocol]

    def channel_uses(self, protocol: str, L: int) -> int:
        """Symbols n a message of L tokens takes under ``protocol``."""
        return int(self._protocol(protocol).channel_uses(L))

    def encode(self, protocol: str, ids: np.ndarray, channel: Any = None) -> np.ndarray:
        """Speaker: ``ids (B, L)`` -> unit-power symbols ``(B, n)`` float32.

        ``channel``: the channel model the speaker is told, for protocols that adapt to it (jscc: SNR-adaptive);
        the others ignore it.
        """
        p = self._protocol(protocol)
        if channel is not None and hasattr(p, "with_channel"):
            p = p.with_channel(channel)
        # arrays from Ray's object store are read-only views; torch wants writable memory
        return p.encode(np.array(ids))

    def decode(self, protocol: str, symbols: np.ndarray, channel: Any = None, gain: np.ndarray | None = None) -> np.ndarray:
        """Hard decoding to tokens: ``symbols (B, n)`` -> ids ``(B, L)`` int64 (protocols that send tokens)."""
        return self._protocol(protocol).decode(np.array(symbols), channel=channel, gain=_writable(gain))

    def relay(self, protocol: str, symbols: np.ndarray, channel: Any = None, gain: np.ndarray | None = None,
              send_protocol: str | None = None) -> np.ndarray:
        """Decode-and-forward relay: decode ``symbols (B, n)`` to token ids with ``protocol`` and re-encode them
        with ``send_protocol`` (default the same) -> the symbols ``(B, n')`` it sends on the next hop."""
        ids = self.decode(protocol, symbols, channel, gain)
        return self.encode(send_protocol or protocol, ids)

    def score(self, protocol: str, symbols: np.ndarray, candidates: np.ndarray, receiver: Receiver = "soft",
              channel: Any = None, gain: np.ndarray | None = None) -> np.ndarray:
        """Candidate scores ``(B, C)``: soft = channel log-likelihood, hard = minus the distance in the
        protocol's own domain (bits or latents); the argmax is the receiver's choice."""
        p = self._protocol(protocol)
        symbols, candidates, gain = np.array(symbols), np.array(candidates), _writable(gain)
        if receiver == "soft":
            return p.score(symbols, candidates, channel=channel, gain=gain)
        if receiver == "hard":
            return p.hard_score(symbols, candidates, channel=channel, gain=gain)
        raise ValueError(f"receiver must be one of {RECEIVERS}, got {receiver!r}")

    def listen(
        self, protocol: str, receiver: Receiver, symbols: np.ndarray, candidates: np.ndarray, channel: Any = None,
        gain: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Listener step in one call: ``(choice (B,) int64, decoded ids (B, L) int64 or None)``.

        The choice is the argmax of ``score`` (the first candidate on ties; the env shuffles the
        candidates, so a tie is a fair coin). ``channel`` (a channel model with ``log_likelihood``) and
        ``gain (B, n)`` (fading gains) are what the receiver is told about the channel; None: AWGN, no
        fading. ``decoded`` is the hard decode of ``symbols`` for the token-accuracy metric whatever the
        receiver, or None for a protocol that sends no tokens (hash).
        """
        p = self._protocol(protocol)
        if receiver not in RECEIVERS:
            raise ValueError(f"receiver must be one of {RECEIVERS}, got {receiver!r}")
        symbols, candidates, gain = np.array(symbols), np.array(candidates), _writable(gain)
        decoded = p.decode(symbols, channel=channel, gain=gain) if p.decodes_tokens else None  # (B, L)
        scores = self.score(protocol, symbols, candidates, receiver, channel, gain)  # (B, C)
        return np.argmax(scores, axis=1).astype(np.int64), decoded

    def generate(self, prompts: list[str], max_tokens: int, *, temperature: float = 1.0, seed: int = 0) -> list[str]:
        """Continue each prompt with the CALM language model (``calm.generate``; prompt i uses seed + i).

        Args:
            prompts: B texts.
            max_tokens: tokens to generate per prompt.
            temperature: sampling temperature in (0, 1].
            seed: seeds all sampling noise.

        Returns:
            B generated texts (without the prompts).
        """
        if self.lm is None:
            raise ValueError("generate needs an lm_checkpoint (a calm EnergyTransformer checkpoint directory)")
        from calm.generate import generate

        return [generate(self.lm, self.lm_tokenizer, prompt, max_tokens, temperature=temperature, seed=seed + i)[0]
                for i, prompt in enumerate(prompts)]

    # ---- LM-prior listener (protocols.prior, experiments.reconstruction) ------------------------------

    def decode_prior(self, protocol: str, symbols: np.ndarray, channel: Any = None, gain: np.ndarray | None = None,
                     samples: int = 32, weight: float = 1.0, rule: str = "map", seed: int = 0) -> np.ndarray:
        """Decode a vector protocol's ``symbols (B, n)`` chunk by chunk with the CALM language model as the prior
        (``protocols.prior.lm_prior_decode``: ``samples`` head draws per chunk, ``rule`` map or snap): ids (B, L)."""
        from protocols.prior import lm_prior_decode

        if self.lm is None:
            raise ValueError("decode_prior needs an lm_checkpoint (a calm EnergyTransformer checkpoint directory)")
        ids, _ = lm_prior_decode(self._protocol(protocol), self.lm, np.array(symbols), channel, _writable(gain),
                                 samples=int(samples), weight=float(weight), rule=rule, seed=int(seed))
        return ids

    def decode_token_prior(self, protocol: str, symbols: np.ndarray, channel: Any = None,
                           gain: np.ndarray | None = None, weight: float = 1.0, beam: int = 4) -> np.ndarray:
        """Decode an uncoded-tokens protocol's ``symbols (B, n)`` with the token baseline as the prior
        (``protocols.prior.token_prior_decode``, beam search of width ``beam``): ids (B, L)."""
        from protocols.prior import token_prior_decode

        if self.token_lm is None:
            raise ValueError("decode_token_prior needs a token_lm_checkpoint (a calm TokenTransformer checkpoint)")
        self.calls += 1
        return token_prior_decode(self._protocol(protocol), self.token_lm, np.array(symbols), channel,
                                  _writable(gain), weight=float(weight), beam=int(beam))

    def decode_bound(self, protocol: str, symbols: np.ndarray, channel: Any = None, gain: np.ndarray | None = None,
                     sent: np.ndarray | None = None) -> np.ndarray:
        """The rate oracle's fast rule on a separation entry (never a trial's receiver): ``symbols (B, n)`` received
        for the passages ``sent (B, L)`` -> ids (B, L): an intact frame's decode, the fill-only guess for a frame
        with bit errors (``protocols.separation.SeparationProtocol.decode_bound``)."""
        return self._protocol(protocol).decode_bound(np.array(symbols), np.array(sent), channel=channel,
                                                     gain=_writable(gain))

    # ---- latent dialogue (experiments.dialogue) ---------------------------------------------------

    def dialogue_generate(self, context: np.ndarray, num_chunks: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Continue a token context by ``num_chunks`` CALM steps and return the vectors themselves.

        Each step draws one head sample ``z`` (temperature 1, ``EnergyTransformer.generate_chunks``: the loop
        ``generate`` uses, so the same noise stream gives the same chunks), decodes it to K tokens (argmax) and
        feeds those back as the next patch input, with the KV cache. The context ``(T,)`` is left-padded with the
        pad id to a multiple of K and keeps only its last ``max_patches - num_chunks`` patches.

        Returns:
            ``(latents (M, l) float32, ids (M K,) int64)``: the sampled vectors and their decoded tokens.
        """
        import torch

        lm = self._dialogue_lm()
        K, M = lm.K, int(num_chunks)
        keep = (lm.config.max_patches - M) * K
        if M < 1 or keep < K:
            raise ValueError(f"num_chunks must be in [1, max_patches - 1 = {lm.config.max_patches - 1}], got {M}")
        ids = np.array(context, dtype=np.int64).reshape(-1)[-keep:]
        if ids.size == 0:
            raise ValueError("dialogue_generate needs a non-empty context")
        x = torch.as_tensor(ids, device=self.device).view(1, -1)
        gen = torch.Generator(device=self.device).manual_seed(int(seed))
        out = lm.generate_chunks(x, M, pad_id=lm.autoencoder.config.pad_id, generator=gen)
        return out.latents[0].float().cpu().numpy(), out.ids.reshape(-1).cpu().numpy().astype(np.int64)

    def dialogue_decode(self, latents: np.ndarray) -> np.ndarray:
        """Received vectors ``(M, l)`` -> their tokens ``(M K,)`` int64 (the CALM's autoencoder, argmax)."""
        import torch

        lm = self._dialogue_lm()
        z = torch.as_tensor(np.array(latents, dtype=np.float32), device=self.device)
        return lm.decode_chunks(z.to(next(lm.parameters()).dtype)).reshape(-1).cpu().numpy().astype(np.int64)

    def _dialogue_lm(self):
        if self.lm is None:
            raise ValueError("the dialogue needs an lm_checkpoint (a calm EnergyTransformer checkpoint directory)")
        self.calls += 1
        return self.lm


def _writable(a: np.ndarray | None) -> np.ndarray | None:
    """A writable copy of an array from Ray's object store (read-only views), or None."""
    return None if a is None else np.array(a)

