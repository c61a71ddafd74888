"""Text referential game (a Lewis signalling game) as a native PettingZoo ``ParallelEnv``.

One ``reset`` starts B independent games; one round (DESIGN.md section 2):

1. ``reset(seed)`` draws for each game a target passage and C-1 distractors (``uniform``: any
   other passage; ``hard``: from a random pool of other passages, the C-1 that share the most
   distinct token ids with the target), and shuffles the listener's candidates.
2. step 1, the speaker acts: ``symbols (B, n) float32``. The env sends them through its channel
   with a generator seeded from reset's seed: ``received, gain = channel.transmit(symbols, rng)``.
3. step 2, the listener acts: ``indices (B,) int``. Reward per game 1 if it picked the target,
   else 0; the reward of every agent is the mean over the B games. The episode ends.

Dimensions: B games per step (``batch_size``), C candidates (``num_candidates``), L tokens per
passage (the passages' width), n channel uses per message (``channel_uses``), V vocabulary size.

=============  =====================================  ==============================================
agent          observation                            action
=============  =====================================  ==============================================
``speaker``    ``target (B, L) int64``                ``symbols (B, n) float32`` (step 1 only)
``listener``   ``{"candidates": (B, C, L) int64,``    ``indices (B,) int`` in [0, C) (step 2 only)
               ``"received": (B, n) float32,``
               ``"gain": (B, n) float32}``
=============  =====================================  ==============================================

``received`` and ``gain`` are zeros until the speaker has acted. ``gain`` is the receiver's
channel-state information (coherent detection, DESIGN.md section 3): the fading gain per symbol
that the message met, ones when nothing fades (``received = gain * sent + noise`` for
``RayleighBlockFading``). It is the product of the gains of the hops between the agent that sent
the symbols (the speaker, or a re-encoding relay) and the receiver; the fixed amplify-and-forward
gains of forwarding relays are not included (they are known constants, ``env.forward_gains``).
Relays that re-encode observe ``{"received", "gain"}`` of their own incoming hop.

Only the acting agent's action is read at each step; actions for the other live agents may be
given (samplers and wrappers supply one for every agent) and are ignored. A wrong shape, dtype,
range or a non-finite symbol raises ``ValueError`` naming the agent and field.

Infos: ``reset`` and step 1 give ``{"phase": ...}`` only (nothing that names the answer). The
final step gives every agent the round's record: ``sent`` (B, n), ``received`` (B, n),
``signal_power`` (measured mean of sent**2), ``noise_power`` (the channel's nominal power, or
None where it has none), ``measured_noise_power`` (mean of (received - sent)**2), ``gain``
(B, n) (as observed), ``target_index`` (B,) (the target's position among the candidates),
``choice`` (B,), ``reward_per_game`` (B,) float32, ``target_passage`` (B,) and
``candidate_passages`` (B, C) (row indices into ``env.passages``).

Passages are deduplicated at construction (identical rows would make a game unwinnable and would
be the first pick of ``hard`` distractors); ``env.passages`` holds the unique rows in their first
order. ``reset(options={"targets": ids (B,)})`` fixes the target rows (for evaluation sweeps);
other option keys are ignored.

This module also holds the engine shared by the variants (``reconstruction``, ``broadcast``,
``relay``): a speaker, optional relays, one or more listeners, each listener at the end of its
own route of channels.

Version history: v0, first version; the ``gain`` observation and info were added within v0
(channels gained ``transmit``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from pettingzoo import ParallelEnv
from pettingzoo.utils import parallel_to_aec

from environments.channels import AWGN, Channel

__all__ = ["ReferentialEnv", "Round", "draw_round", "env", "parallel_env", "token_overlap"]

SPEAKER = "speaker"
LISTENER = "listener"
DISTRACTORS = ("uniform", "hard")
TASKS = ("choose", "reconstruct")
RELAY_MODES = ("forward", "reencode")
# default size of the random pool that hard distractors are picked from
DEFAULT_POOL_SIZE = 64

Distractors = Literal["uniform", "hard"]
Task = Literal["choose", "reconstruct"]
RelayMode = Literal["forward", "reencode"]


# --------------------------------------------------------------------------- validation


def check_int(name: str, value: object, minimum: int) -> int:
    """Return ``value`` as an int if it is an integer >= ``minimum``, else raise ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def check_channel(name: str, channel: object) -> Channel:
    """Return ``channel`` if it is callable as ``channel(x, rng)`` and has ``output_power``."""
    if not isinstance(channel, Channel):
        raise ValueError(
            f"{name} must be a channel (e.g. environments.channels.AWGN(sigma)), got {type(channel).__name__}"
        )
    return channel


def check_passages(passages: object, vocab_size: int | None) -> tuple[np.ndarray, int]:
    """Validate passages, drop duplicate rows (first occurrence kept, order kept).

    Args:
      passages: int array (N, L) of token ids.
      vocab_size: V, or None for ``passages.max() + 1``.

    Returns:
      ``(unique int64 (N', L), V)``.
    """
    if not isinstance(passages, np.ndarray):
        raise ValueError(f"passages must be a numpy int array (N, L), got {type(passages).__name__}")
    if passages.ndim != 2:
        raise ValueError(f"passages must be 2-D (N, L), got shape {passages.shape}")
    if passages.dtype == np.bool_ or not np.issubdtype(passages.dtype, np.integer):
        raise ValueError(f"passages must have an integer dtype (token ids), got {passages.dtype}")
    N, L = passages.shape
    if L < 1:
        raise ValueError(f"passages must have L >= 1 tokens per row, got shape {passages.shape}")
    if N < 2:
        raise ValueError(f"passages must hold at least 2 rows, got {N}")
    if passages.min() < 0:
        raise ValueError(f"passages must hold token ids >= 0, got min {passages.min()}")
    top = int(passages.max())
    if vocab_size is None:
        vocab_size = top + 1
    vocab_size = check_int("vocab_size", vocab_size, 1)
    if top >= vocab_size:
        raise ValueError(f"passages hold token id {top}, outside [0, vocab_size={vocab_size})")
    unique = np.ascontiguousarray(passages[unique_rows(passages)], dtype=np.int64)
    unique.setflags(write=False)
    return unique, vocab_size


def check_symbols(action: object, shape: tuple[int, ...], field: str) -> np.ndarray:
    """Validate channel symbols: a finite float32 ndarray of ``shape``; returns it."""
    if not isinstance(action, np.ndarray):
        raise ValueError(
            f"{field} must be a numpy float32 array of shape {shape}, got {type(action).__name__}"
        )
    if action.shape != shape:
        raise ValueError(f"{field} must have shape {shape} (B, n), got {action.shape}")
    if action.dtype != np.float32:
        raise ValueError(
            f"{field} must have dtype float32, got {action.dtype} (cast with .astype(np.float32))"
        )
    if not np.isfinite(action).all():
        raise ValueError(f"{field} must be finite, got {int((~np.isfinite(action)).sum())} NaN/inf symbols")
    return action


def check_ids(action: object, shape: tuple[int, ...], high: int, field: str) -> np.ndarray:
    """Validate an integer action of ``shape`` with values in ``[0, high)``; returns it as int64."""
    if not isinstance(action, np.ndarray):
        raise ValueError(f"{field} must be a numpy int array of shape {shape}, got {type(action).__name__}")
    if action.shape != shape:
        raise ValueError(f"{field} must have shape {shape}, got {action.shape}")
    if action.dtype == np.bool_ or not np.issubdtype(action.dtype, np.integer):
        raise ValueError(f"{field} must have an integer dtype, got {action.dtype}")
    if action.size and (action.min() < 0 or action.max() >= high):
        raise ValueError(f"{field} values must be in [0, {high}), got min {action.min()} max {action.max()}")
    return action.astype(np.int64, copy=False)


# --------------------------------------------------------------------------- drawing games


@dataclass(frozen=True)
class Round:
    """The passages of B games (row indices into the env's passages)."""

    target: np.ndarray
    """(B,) the target row of each game"""
    candidates: np.ndarray
    """(B, C) the candidate rows in the listener's (shuffled) order; (B, 0) without candidates"""
    answer: np.ndarray
    """(B,) the target's position among the candidates; -1 without candidates"""


def sample_distinct(rng: np.random.Generator, num: int, exclude: np.ndarray, k: int) -> np.ndarray:
    """Per row, ``k`` distinct values of ``range(num)``, none equal to that row's ``exclude``.

    Uniform over such k-tuples: rows drawn with replacement are kept when they hold no repeat,
    the others are redrawn without replacement.

    Args:
      exclude: (B,) the value each row must avoid.

    Returns:
      int64 (B, k).
    """
    B = exclude.shape[0]
    out = rng.integers(0, num - 1, size=(B, k))
    # draw from num - 1 values and step over the excluded one
    out += out >= exclude[:, None]
    if k > 1:
        ordered = np.sort(out, axis=1)
        for b in np.flatnonzero((ordered[:, 1:] == ordered[:, :-1]).any(axis=1)):
            row = rng.choice(num - 1, size=k, replace=False)
            out[b] = row + (row >= exclude[b])
    return out


def token_overlap(target: np.ndarray, pool: np.ndarray) -> np.ndarray:
    """Number of distinct token ids each pool passage shares with its game's target.

    Args:
      target: int (B, L).
      pool: int (B, P, L).

    Returns:
      int64 (B, P).
    """
    B = target.shape[0]
    if target.size == 0 or pool.size == 0:
        return np.zeros(pool.shape[:2], dtype=np.int64)
    ordered = np.sort(pool, axis=2)  # (B, P, L)
    first = np.ones(ordered.shape, dtype=bool)  # first occurrence of each id in its passage
    first[..., 1:] = ordered[..., 1:] != ordered[..., :-1]
    # membership by binary search in each game's sorted target ids, all games at once: game b's ids are
    # shifted by b * span, so the sorted rows laid end to end are one sorted array (no V-sized table: a
    # 128k-id vocabulary costs what a small one does)
    low = int(min(target.min(), pool.min()))
    span = int(max(target.max(), pool.max())) - low + 1
    offset = np.arange(B, dtype=np.int64) * span
    keys = (np.sort(target.astype(np.int64) - low, axis=1) + offset[:, None]).ravel()  # (B L,) ascending
    query = ordered.astype(np.int64) - low + offset[:, None, None]  # (B, P, L)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return ((keys[pos] == query) & first).sum(axis=2)


def unique_rows(ids: np.ndarray) -> np.ndarray:
    """Indices of the first occurrence of each distinct row of ``ids (N, L)``, ascending."""
    # hash each row with random odd 64-bit multipliers (wrapping arithmetic), then confirm
    # that rows with equal hashes are equal; a true collision falls back to an exact sort
    multipliers = np.random.default_rng(0).integers(1, 2**63, size=ids.shape[1], dtype=np.uint64) | np.uint64(
        1
    )
    hashes = (ids.astype(np.uint64) * multipliers).sum(axis=1, dtype=np.uint64)
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    if not np.array_equal(ids, ids[first[inverse]]):
        _, first = np.unique(ids, axis=0, return_index=True)
    return np.sort(first)


def draw_round(
    rng: np.random.Generator,
    passages: np.ndarray,
    batch_size: int,
    num_candidates: int,
    *,
    distractors: Distractors = "uniform",
    pool_size: int = DEFAULT_POOL_SIZE,
    targets: np.ndarray | None = None,
) -> Round:
    """Draw B games: targets (uniform, with replacement), C-1 distinct distractors each, shuffled.

    Args:
      passages: int (N, L), no duplicate rows.
      num_candidates: C; 0 draws targets only (the reconstruction task).
      distractors: ``uniform`` (any other passage) or ``hard`` (of ``pool_size`` other passages
        drawn uniformly, the C-1 sharing the most distinct token ids with the target; ties keep
        the pool's random order).
      targets: (B,) fixed target rows, or None to draw them.
    """
    N = passages.shape[0]
    B, C = batch_size, num_candidates
    target = rng.integers(0, N, size=B) if targets is None else targets
    if C == 0:
        return Round(target, np.zeros((B, 0), dtype=np.int64), np.full(B, -1, dtype=np.int64))
    if distractors == "uniform":
        others = sample_distinct(rng, N, target, C - 1)  # (B, C-1)
    else:
        pool = sample_distinct(rng, N, target, pool_size)  # (B, P)
        overlap = token_overlap(passages[target], passages[pool])  # (B, P)
        best = np.argsort(-overlap, axis=1, kind="stable")[:, : C - 1]
        others = np.take_along_axis(pool, best, axis=1)  # (B, C-1)
    rows = np.concatenate([target[:, None], others], axis=1)  # (B, C), target first
    order = np.argsort(rng.random((B, C)), axis=1)  # a random permutation per game
    candidates = np.take_along_axis(rows, order, axis=1)
    answer = np.argmax(order == 0, axis=1)
    return Round(target, candidates, answer)


# --------------------------------------------------------------------------- the engine


class SignallingGame(ParallelEnv[str, Any, np.ndarray]):
    """Engine shared by every variant: a speaker, optional relays, listeners at the ends of routes.

    Each listener has a route: the channels its message crosses, one per hop. With more than one
    hop the route passes relays; ``relay_mode="forward"`` lets the env forward the received
    symbols with a fixed amplify-and-forward gain, ``"reencode"`` makes each relay an agent whose
    action is the symbols it sends on. Steps: the speaker, then each relay in route order
    (``reencode`` only), then every listener at once. Subclasses only name the agents and routes.
    """

    metadata: dict[str, Any] = {"name": "signalling_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        passages: np.ndarray,
        *,
        routes: Mapping[str, Sequence[Channel]],
        task: Task,
        batch_size: int,
        num_candidates: int,
        channel_uses: int,
        distractors: Distractors,
        pool_size: int | None,
        relay_mode: RelayMode,
        vocab_size: int | None,
        render_mode: str | None,
    ):
        """Validate the configuration and build the spaces (see the public subclasses for the args)."""
        if render_mode is not None:
            raise ValueError(f"render_mode must be None (this env does not render), got {render_mode!r}")
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if distractors not in DISTRACTORS:
            raise ValueError(f"distractors must be one of {DISTRACTORS}, got {distractors!r}")
        if relay_mode not in RELAY_MODES:
            raise ValueError(f"relay_mode must be one of {RELAY_MODES}, got {relay_mode!r}")
        self.passages, self.vocab_size = check_passages(passages, vocab_size)
        N, L = self.passages.shape
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.channel_uses = check_int("channel_uses", channel_uses, 1)
        self.passage_length = L
        self.task: Task = task
        self.distractors: Distractors = distractors
        self.relay_mode: RelayMode = relay_mode
        self.render_mode = None
        if task == "choose":
            self.num_candidates = check_int("num_candidates", num_candidates, 2)
            if self.num_candidates > N:
                raise ValueError(
                    f"num_candidates={self.num_candidates} needs at least that many distinct passages, "
                    f"got {N} (after removing {passages.shape[0] - N} duplicate rows)"
                )
            if pool_size is None:
                pool_size = max(self.num_candidates - 1, min(DEFAULT_POOL_SIZE, N - 1))
            self.pool_size = check_int("pool_size", pool_size, self.num_candidates - 1)
            if self.pool_size > N - 1:
                raise ValueError(
                    f"pool_size must be <= N - 1 = {N - 1} (passages other than the target), got {pool_size}"
                )
        else:
            self.num_candidates = 0
            self.pool_size = 0

        if not routes:
            raise ValueError("routes must name at least one listener")
        self.routes: dict[str, tuple[Channel, ...]] = {}
        for listener, route in routes.items():
            route = tuple(route)
            if not route:
                raise ValueError(f"the route to {listener!r} must hold at least one channel")
            self.routes[listener] = tuple(
                check_channel(f"channel of hop {h} to {listener!r}", c) for h, c in enumerate(route)
            )
        self.listeners = tuple(self.routes)
        # relays are agents only when they re-encode
        self.relays: dict[str, tuple[str, int]] = {}  # relay name -> (listener, hop it sends on)
        if relay_mode == "reencode":
            if len(self.routes) != 1:
                raise ValueError(f"relay_mode='reencode' needs a single listener, got {len(self.routes)}")
            for listener, route in self.routes.items():
                for hop in range(1, len(route)):
                    self.relays[f"relay_{hop - 1}"] = (listener, hop)
        self.possible_agents = [SPEAKER, *self.relays, *self.listeners]
        self.agents: list[str] = []
        # fixed forward gains: unit expected power into every hop (never per-message scaling)
        self.forward_gains = {
            listener: tuple(_unit_gain(route[h - 1]) for h in range(1, len(route)))
            for listener, route in self.routes.items()
        }
        self._build_spaces()
        self.np_random: np.random.Generator | None = None
        self.np_random_seed: int | None = None

    # ---------------------------------------------------------------- spaces

    def _build_spaces(self) -> None:
        """Build every agent's spaces once; the space methods return these same objects."""
        B, C, L, n, V = (
            self.batch_size,
            self.num_candidates,
            self.passage_length,
            self.channel_uses,
            self.vocab_size,
        )

        # a new object per agent and field: seeding one agent's space must not reseed another's
        def symbols() -> spaces.Box:
            return spaces.Box(-np.inf, np.inf, shape=(B, n), dtype=np.float32)

        def gains() -> spaces.Box:
            return spaces.Box(0.0, np.inf, shape=(B, n), dtype=np.float32)

        self.observation_spaces: dict[str, spaces.Space] = {SPEAKER: spaces.MultiDiscrete(np.full((B, L), V))}
        self.action_spaces: dict[str, spaces.Space] = {SPEAKER: symbols()}
        for relay in self.relays:
            self.observation_spaces[relay] = spaces.Dict({"received": symbols(), "gain": gains()})
            self.action_spaces[relay] = symbols()
        for listener in self.listeners:
            if self.task == "choose":
                self.observation_spaces[listener] = spaces.Dict(
                    {
                        "candidates": spaces.MultiDiscrete(np.full((B, C, L), V)),
                        "received": symbols(),
                        "gain": gains(),
                    }
                )
                self.action_spaces[listener] = spaces.MultiDiscrete(np.full(B, C))
            else:
                self.observation_spaces[listener] = spaces.Dict({"received": symbols(), "gain": gains()})
                self.action_spaces[listener] = spaces.MultiDiscrete(np.full((B, L), V))

    def observation_space(self, agent: str) -> spaces.Space:
        """The agent's observation space (the same object on every call)."""
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        """The agent's action space (the same object on every call)."""
        return self.action_spaces[agent]

    # ---------------------------------------------------------------- episode

    def reset(
        self, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Start B new games.

        Args:
          seed: reseeds ``self.np_random`` (games and channel noise); None continues its stream.
          options: ``{"targets": (B,) row indices}`` fixes the targets; other keys are ignored.

        Returns:
          ``(observations, infos)`` for every agent; infos are ``{"phase": "speak"}``.
        """
        if seed is not None or self.np_random is None:
            self.np_random, self.np_random_seed = seeding.np_random(seed)
        B, n = self.batch_size, self.channel_uses
        targets = None
        if options is not None and options.get("targets") is not None:
            targets = check_ids(
                np.asarray(options["targets"]), (B,), self.passages.shape[0], 'options["targets"]'
            )
        # channel noise has its own generators, drawn first: the same seed gives the same games
        # whatever the channels are, and the same noise whatever the games are
        hops = sum(len(route) for route in self.routes.values())
        noise_seeds = np.random.SeedSequence(int(self.np_random.integers(2**63))).spawn(hops)
        rngs = iter(np.random.default_rng(s) for s in noise_seeds)
        self._channel_rngs = {
            listener: [next(rngs) for _ in route] for listener, route in self.routes.items()
        }
        self.round = draw_round(
            self.np_random,
            self.passages,
            B,
            self.num_candidates,
            distractors=self.distractors,
            pool_size=self.pool_size,
            targets=targets,
        )
        self._target_ids = self.passages[self.round.target]  # (B, L)
        self._candidate_ids = self.passages[self.round.candidates]  # (B, C, L)
        zeros = np.zeros((B, n), dtype=np.float32)
        self._inbox = dict.fromkeys([*self.relays, *self.listeners], zeros)  # what each agent received
        self._gains = dict.fromkeys([*self.relays, *self.listeners], zeros)  # the fading gain it met
        self._sent: np.ndarray | None = None
        self._hops: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {
            listener: [] for listener in self.listeners
        }
        self._turns = [(SPEAKER,)] + [(relay,) for relay in self.relays] + [self.listeners]
        self._turn = 0
        self.agents = list(self.possible_agents)
        return self._observations(), {agent: {"phase": "speak"} for agent in self.agents}

    def step(
        self, actions: dict[str, np.ndarray]
    ) -> tuple[dict[str, Any], dict[str, float], dict[str, bool], dict[str, bool], dict[str, dict[str, Any]]]:
        """Apply the acting agents' actions (the speaker, then each relay, then the listeners).

        Returns:
          ``(observations, rewards, terminations, truncations, infos)`` for every live agent.
          Rewards are 0 until the listeners act, then each listener's mean reward over the B games
          (the speaker and relays get the mean over listeners); every agent then terminates.
        """
        if not self.agents:
            raise RuntimeError("step() called on a finished episode (no live agents); call reset() first")
        if not isinstance(actions, Mapping):
            raise ValueError(f"actions must be a dict keyed by agent, got {type(actions).__name__}")
        unknown = set(actions) - set(self.agents)
        if unknown:
            raise ValueError(f"actions has keys {sorted(unknown)} that are not live agents {self.agents}")
        acting = self._turns[self._turn]
        for agent in acting:
            if agent not in actions:
                raise ValueError(f"actions[{agent!r}] is missing: it is the {'/'.join(acting)} turn")
        B, n = self.batch_size, self.channel_uses
        live = list(self.agents)
        rewards = dict.fromkeys(live, 0.0)
        done = False
        if acting[0] == SPEAKER:
            self._sent = check_symbols(actions[SPEAKER], (B, n), "actions['speaker']").copy()
            for listener in self.listeners:
                self._transmit(listener, 0, self._sent)
            phase = "relay" if self.relays else "listen"
        elif acting[0] in self.relays:
            relay = acting[0]
            listener, hop = self.relays[relay]
            self._transmit(listener, hop, check_symbols(actions[relay], (B, n), f"actions[{relay!r}]").copy())
            phase = "relay" if self._turn + 1 < len(self._turns) - 1 else "listen"
        else:
            results = {listener: self._score(listener, actions[listener]) for listener in self.listeners}
            for listener in self.listeners:
                rewards[listener] = float(results[listener]["reward_per_game"].mean())
            team = float(np.mean([rewards[listener] for listener in self.listeners]))
            for agent in [SPEAKER, *self.relays]:
                rewards[agent] = team
            done = True
            phase = "done"
        self._turn += 1
        observations = self._observations()
        if done:
            infos = self._final_infos(results)
            self.agents = []
        else:
            infos = {agent: {"phase": phase} for agent in live}
        terminations = dict.fromkeys(live, done)
        truncations = dict.fromkeys(live, False)
        return observations, rewards, terminations, truncations, infos

    def render(self) -> None:
        """This env does not render (``render_mode`` is always None)."""
        return None

    def close(self) -> None:
        """Nothing to release."""

    # ---------------------------------------------------------------- internals

    def _transmit(self, listener: str, hop: int, x: np.ndarray) -> None:
        """Send ``x (B, n)`` over ``hop`` of the route to ``listener``; forward on if relays forward.

        The receiving agent's ``gain`` is the product of the fading gains of the hops crossed here
        (from the sending agent on; forward gains excluded).
        """
        route = self.routes[listener]
        gain = np.ones(x.shape, dtype=np.float32)
        while True:
            y, hop_gain = route[hop].transmit(x, self._channel_rngs[listener][hop])
            gain = gain * hop_gain
            self._hops[listener].append((x, y))
            hop += 1
            if hop == len(route):
                self._inbox[listener] = y
                self._gains[listener] = gain
                return
            if self.relay_mode == "reencode":
                relay = next(r for r, (lst, h) in self.relays.items() if lst == listener and h == hop)
                self._inbox[relay] = y
                self._gains[relay] = gain
                return
            x = (self.forward_gains[listener][hop - 1] * y).astype(np.float32)

    def _score(self, listener: str, action: object) -> dict[str, np.ndarray]:
        """Check one listener's answer and score it per game."""
        B, L = self.batch_size, self.passage_length
        field = f"actions[{listener!r}]"
        if self.task == "choose":
            choice = check_ids(action, (B,), self.num_candidates, field)
            reward = (choice == self.round.answer).astype(np.float32)
            return {"choice": choice, "reward_per_game": reward}
        ids = check_ids(action, (B, L), self.vocab_size, field)
        correct = ids == self._target_ids  # (B, L)
        accuracy = correct.mean(axis=1).astype(np.float32)
        return {
            "choice": ids,
            "reward_per_game": accuracy,
            "token_accuracy": accuracy,
            "exact": correct.all(axis=1),
        }

    def _observations(self) -> dict[str, Any]:
        """Every live agent's observation."""
        obs: dict[str, Any] = {SPEAKER: self._target_ids.copy()}
        for relay in self.relays:
            obs[relay] = {"received": self._inbox[relay].copy(), "gain": self._gains[relay].copy()}
        for listener in self.listeners:
            obs[listener] = {"received": self._inbox[listener].copy(), "gain": self._gains[listener].copy()}
            if self.task == "choose":
                obs[listener]["candidates"] = self._candidate_ids.copy()
        return obs

    def _final_infos(self, results: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, Any]]:
        """The round's record for every agent (see the module docstring)."""
        common = {
            "phase": "done",
            "sent": self._sent,
            "signal_power": float(np.mean(np.square(self._sent, dtype=np.float64))),
            "target_index": self.round.answer,
            "target_passage": self.round.target,
            "candidate_passages": self.round.candidates,
        }
        per_listener = {}
        for listener in self.listeners:
            received = self._inbox[listener]
            hops = self._hops[listener]
            per_listener[listener] = {
                "received": received,
                "gain": self._gains[listener],
                "noise_power": _nominal_noise_power(self.routes[listener]),
                # over the whole route, against what the speaker sent
                "measured_noise_power": float(np.mean(np.square(received - self._sent, dtype=np.float64))),
                "hop_sent": [x for x, _ in hops],
                "hop_received": [y for _, y in hops],
                **results[listener],
            }
        infos: dict[str, dict[str, Any]] = {}
        for agent in self.possible_agents:
            own = agent if agent in per_listener else None
            if agent in self.relays:
                own = self.relays[agent][0]
            if own is None and len(self.listeners) == 1:
                own = self.listeners[0]
            info = dict(common)
            if own is not None:
                info.update(per_listener[own])
            if agent == SPEAKER:
                info["listeners"] = per_listener
            infos[agent] = info
        return infos


def _unit_gain(channel: Channel) -> float:
    """Fixed amplify-and-forward gain: 1 / sqrt(expected output power for unit input power)."""
    power = channel.output_power(1.0)
    return 1.0 / math.sqrt(power) if power > 0 else 1.0


def _nominal_noise_power(route: Sequence[Channel]) -> float | None:
    """The single channel's nominal noise power (``sigma**2`` for AWGN), else None."""
    if len(route) == 1 and hasattr(route[0], "noise_power"):
        return float(route[0].noise_power)
    return None


# --------------------------------------------------------------------------- the plain game


class ReferentialEnv(SignallingGame):
    """The referential game: a speaker and a listener over one channel (see the module docstring)."""

    metadata = {"name": "referential_v0", "render_modes": [], "is_parallelizable": True}

    def __init__(
        self,
        passages: np.ndarray,
        *,
        channel_uses: int,
        batch_size: int = 1,
        num_candidates: int = 4,
        channel: Channel = AWGN(0.0),
        distractors: Distractors = "uniform",
        pool_size: int | None = None,
        vocab_size: int | None = None,
        render_mode: str | None = None,
    ):
        """Build the game.

        Args:
          passages: int array (N, L) of token ids, one passage per row (deduplicated here).
          channel_uses: n, symbols per message.
          batch_size: B, games per step.
          num_candidates: C >= 2, candidates per game (the target and C-1 distractors).
          channel: the channel model (``environments.channels``); default noiseless AWGN(0).
          distractors: ``uniform`` or ``hard`` (most shared token ids, from a random pool).
          pool_size: the pool ``hard`` distractors come from; default min(64, N-1) (at least C-1).
          vocab_size: V for the id spaces; default ``passages.max() + 1``.
          render_mode: must be None.
        """
        super().__init__(
            passages,
            routes={LISTENER: (channel,)},
            task="choose",
            batch_size=batch_size,
            num_candidates=num_candidates,
            channel_uses=channel_uses,
            distractors=distractors,
            pool_size=pool_size,
            relay_mode="forward",
            vocab_size=vocab_size,
            render_mode=render_mode,
        )
        self.channel = channel


def parallel_env(passages: np.ndarray, **kwargs: Any) -> ReferentialEnv:
    """The referential game as a ParallelEnv (args as ``ReferentialEnv``)."""
    return ReferentialEnv(passages, **kwargs)


def env(passages: np.ndarray, **kwargs: Any):
    """The referential game as an AEC env (PettingZoo's ``parallel_to_aec`` conversion)."""
    return parallel_to_aec(ReferentialEnv(passages, **kwargs))
