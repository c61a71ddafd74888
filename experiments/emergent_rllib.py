"""Our referential ParallelEnv under Ray RLlib: PPO trains a discrete speaker and a listener (issue 31, point 4).

    python -m experiments.emergent_rllib                    # 30 iterations, C = 2, 4 passages, 2 bits, local Ray
    python -m experiments.emergent_rllib --candidates 4 --passages 8 --bits 3 --iterations 60
    python -m experiments.emergent_rllib --help

The environment is ours, unchanged: ``environments.referential.ReferentialEnv`` (a PettingZoo ``ParallelEnv``,
B = 1 game per step, AWGN channel) on N random token-id passages of L tokens over a vocabulary of V ids (the env
sees token ids, never a model, so no CALM model is needed). One thin PettingZoo wrapper, ``DiscreteSpeaker``, makes
it an RL problem with a discrete speaker and flat observations, and RLlib's own ``ParallelPettingZooEnv`` turns
that into its ``MultiAgentEnv``:

=============  ================================================  ============================================
agent          observation (float32, gymnasium's ``flatten``)    action
=============  ================================================  ============================================
``speaker``    one-hot target ids ``(L V,)``                     ``MultiDiscrete([2] * n)``: n bits, sent as
                                                                 BPSK symbols +-1 (unit power, n channel uses)
``listener``   one-hot candidates ``(C L V,)``, ``received``     ``MultiDiscrete([C])``: the env's own action
               ``(n,)``, ``gain`` ``(n,)``
=============  ================================================  ============================================

An episode is the env's two steps: the speaker acts at step 1, the listener at step 2 (every live agent is asked
for an action at every step; the env reads only the acting agent's). Both agents get the success (0 or 1) at
step 2, so a listener's mean episode return is the success rate; chance is 1 / C. Two RLlib modules (one per
agent, ``policy_mapping_fn`` = the agent's name) are trained with PPO (new API stack, torch, CPU), gamma = 1.

``train_ppo(cfg)`` returns the learning curve, one dict per iteration (iteration, env steps, episodes, success:
the mean listener return over the iteration's episodes, sampled with exploration, and seconds), and the CLI
writes it to ``<out_dir>/curve.csv``, ``curve.png`` and ``config.json``.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo.utils.wrappers import BaseParallelWrapper

from calm.tracking import check_tracking, open_tracker
from environments.channels import AWGN
from environments.referential import LISTENER, SPEAKER, ReferentialEnv
from experiments.common.config import TrackerName, default_tracking

__all__ = ["Config", "DiscreteSpeaker", "main", "make_env", "train_ppo"]

ENV_NAME = "latentcomm_referential_discrete"
CURVE_COLUMNS = ["iteration", "env_steps", "episodes", "success", "chance", "seconds"]


# ---------------------------------------------------------------------------------------------------------
# config


@dataclass
class Config:
    """PPO on the referential game, small enough for a laptop core."""

    passages: int = 4
    """N, distinct random passages the games draw from (>= candidates)"""
    passage_length: int = 2
    """L, tokens per passage"""
    vocab_size: int = 4
    """V, token ids per position (V^L >= passages)"""
    candidates: int = 2
    """C, candidates per game (chance = 1 / C)"""
    bits: int = 2
    """n, bits per message = channel uses (BPSK)"""
    sigma: float = 0.0
    """AWGN standard deviation per channel use (0: noiseless)"""
    iterations: int = 30
    """PPO iterations (each samples, then updates both modules)"""
    episodes_per_iteration: int = 256
    """games sampled per iteration (2 env steps each)"""
    minibatch_size: int = 128
    """agent steps per PPO minibatch"""
    epochs: int = 8
    """passes over each iteration's batch"""
    lr: float = 3e-3
    """Adam learning rate of both modules"""
    entropy_coeff: float = 0.01
    """PPO entropy bonus"""
    hidden: int = 64
    """width of the two hidden layers of each module (policy and value nets)"""
    envs_per_runner: int = 16
    """envs stepped together by the (local) env runner"""
    seed: int = 0
    """seed of the passages, the env runner's games and noise, and torch"""
    address: str = "auto"
    """Ray: auto joins a running cluster (RAY_ADDRESS or `ray start`) else starts a local one; local; or an
    address"""
    out_dir: str = "results/emergent_rllib"
    """where the CLI writes curve.csv, curve.png and config.json"""
    tracking: TrackerName = default_tracking()
    """experiment tracker of the CLI run (calm.tracking): mlflow (the local store beside out_dir unless
    --tracking-uri), wandb or none"""
    tracking_uri: str = ""
    """MLflow store or server; empty: sqlite:///<folder above out_dir>/mlflow.db"""

    def __post_init__(self) -> None:
        check_tracking(self.tracking, self.tracking_uri)
        for name in ("passages", "passage_length", "vocab_size", "bits", "iterations", "episodes_per_iteration",
                     "minibatch_size", "epochs", "hidden", "envs_per_runner"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.candidates, int) or self.candidates < 2:
            raise ValueError(f"candidates must be an integer >= 2, got {self.candidates!r}")
        if self.passages < self.candidates:
            raise ValueError(f"passages must be >= candidates={self.candidates}, got {self.passages}")
        if self.vocab_size**self.passage_length < self.passages:
            raise ValueError(f"vocab_size**passage_length = {self.vocab_size**self.passage_length} distinct passages "
                             f"exist, fewer than passages={self.passages}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ValueError(f"sigma must be finite and >= 0, got {self.sigma}")
        for name in ("lr", "entropy_coeff"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value}")


# ---------------------------------------------------------------------------------------------------------
# the env, as RLlib sees it


class DiscreteSpeaker(BaseParallelWrapper):
    """``ReferentialEnv`` (B = 1) with a discrete speaker and flat float32 observations; a PettingZoo ParallelEnv.

    The speaker's action is n bits ``MultiDiscrete([2] * n)``, sent as ``symbols (1, n) = 2 bits - 1`` (BPSK, unit
    power); the listener's action is the env's own ``(1,)`` index. Observations are the env's, flattened with
    ``gymnasium.spaces.flatten`` (ids one-hot) and cast to float32. Rewards, terminations and infos are the env's.
    """

    def __init__(self, env: ReferentialEnv):
        super().__init__(env)
        if env.batch_size != 1:
            raise ValueError(f"DiscreteSpeaker needs the env's batch_size = 1 (one game per step), got {env.batch_size}")
        # built once: the space methods return the same object on every call (PettingZoo's contract)
        self.observation_spaces = {}
        for agent in env.possible_agents:
            flat = spaces.flatten_space(env.observation_space(agent))
            self.observation_spaces[agent] = spaces.Box(flat.low.astype(np.float32), flat.high.astype(np.float32),
                                                        dtype=np.float32)
        self.action_spaces = {SPEAKER: spaces.MultiDiscrete(np.full(env.channel_uses, 2)),
                              LISTENER: env.action_space(LISTENER)}

    def observation_space(self, agent: str) -> spaces.Box:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self.action_spaces[agent]

    def _flat(self, observations: dict[str, Any]) -> dict[str, np.ndarray]:
        return {agent: spaces.flatten(self.env.observation_space(agent), obs).astype(np.float32)
                for agent, obs in observations.items()}

    def reset(self, seed: int | None = None, options: dict[str, Any] | None = None):
        """The env's ``reset``, observations flattened."""
        observations, infos = self.env.reset(seed=seed, options=options)
        return self._flat(observations), infos

    def step(self, actions: dict[str, np.ndarray]):
        """The env's ``step`` with the speaker's bits as BPSK symbols; observations flattened."""
        actions = dict(actions)
        if SPEAKER in actions:
            bits = np.asarray(actions[SPEAKER]).reshape(1, -1)  # (1, n)
            actions[SPEAKER] = (2.0 * bits - 1.0).astype(np.float32)
        if LISTENER in actions:
            actions[LISTENER] = np.asarray(actions[LISTENER], dtype=np.int64).reshape(1)
        observations, rewards, terminations, truncations, infos = self.env.step(actions)
        return self._flat(observations), rewards, terminations, truncations, infos


def game_passages(cfg: Config) -> np.ndarray:
    """N distinct random passages ``int64 (N, L)`` over V ids, fixed by the seed."""
    rng = np.random.default_rng(cfg.seed)
    codes = rng.choice(cfg.vocab_size**cfg.passage_length, size=cfg.passages, replace=False)  # distinct rows
    digits = codes[:, None] // cfg.vocab_size ** np.arange(cfg.passage_length)[None, :] % cfg.vocab_size
    return digits.astype(np.int64)  # (N, L)


def make_env(cfg: Config) -> DiscreteSpeaker:
    """The wrapped referential game of ``cfg`` (a PettingZoo ParallelEnv)."""
    env = ReferentialEnv(game_passages(cfg), channel_uses=cfg.bits, batch_size=1, num_candidates=cfg.candidates,
                         channel=AWGN(cfg.sigma), vocab_size=cfg.vocab_size)
    return DiscreteSpeaker(env)


def _rllib_env(env_config: dict[str, Any]):
    from ray.rllib.env.wrappers.pettingzoo_env import ParallelPettingZooEnv

    return ParallelPettingZooEnv(make_env(Config(**env_config)))


# ---------------------------------------------------------------------------------------------------------
# training


def ppo_config(cfg: Config):
    """The RLlib ``PPOConfig``: one module per agent, a local env runner, one CPU learner."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig
    from ray.rllib.core.rl_module.multi_rl_module import MultiRLModuleSpec
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    env_steps = 2 * cfg.episodes_per_iteration  # every episode is two env steps
    return (
        PPOConfig()
        .environment(ENV_NAME, env_config=asdict(cfg))
        .framework("torch")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=cfg.envs_per_runner,
                     rollout_fragment_length="auto")
        .learners(num_learners=0, num_gpus_per_learner=0)
        .multi_agent(policies={SPEAKER, LISTENER}, policy_mapping_fn=lambda agent_id, *args, **kwargs: agent_id)
        .rl_module(rl_module_spec=MultiRLModuleSpec(rl_module_specs={SPEAKER: RLModuleSpec(), LISTENER: RLModuleSpec()}),
                   model_config=DefaultModelConfig(fcnet_hiddens=[cfg.hidden, cfg.hidden], vf_share_layers=False))
        .training(train_batch_size_per_learner=env_steps, minibatch_size=cfg.minibatch_size,
                  num_epochs=cfg.epochs, lr=cfg.lr, gamma=1.0, lambda_=1.0, entropy_coeff=cfg.entropy_coeff)
        # each iteration's success is the mean over (about) its own episodes
        .reporting(metrics_num_episodes_for_smoothing=cfg.episodes_per_iteration)
        .debugging(seed=cfg.seed)
    )


def train_ppo(cfg: Config, *, progress: bool = True) -> list[dict[str, Any]]:
    """Train both agents with PPO for ``cfg.iterations`` iterations; returns the learning curve.

    Joins or starts Ray (``cfg.address``; a Ray already initialised in this process is used as it is).

    Returns:
      one dict per iteration with the keys ``CURVE_COLUMNS``.
    """
    import ray
    from ray.tune.registry import register_env

    from calm.ray_runtime import init_ray

    started = init_ray(address=cfg.address, num_cpus=2, num_gpus=0, log_to_driver=False, announce=progress)
    register_env(ENV_NAME, _rllib_env)
    algo = ppo_config(cfg).build_algo()
    curve: list[dict[str, Any]] = []
    start = time.perf_counter()
    try:
        for i in range(1, cfg.iterations + 1):
            result = algo.train()
            runners = result.get("env_runners", {})
            success = runners.get("agent_episode_returns_mean", {}).get(LISTENER, float("nan"))
            curve.append({"iteration": i, "env_steps": int(runners.get("num_env_steps_sampled_lifetime", 0)),
                          "episodes": int(runners.get("num_episodes_lifetime", 0)), "success": float(success),
                          "chance": 1.0 / cfg.candidates, "seconds": round(time.perf_counter() - start, 2)})
            if progress:
                row = curve[-1]
                print(f"iteration {i:3d}  env steps {row['env_steps']:6d}  success {row['success']:.3f}  "
                      f"(chance {row['chance']:.3f})  {row['seconds']:.0f} s", flush=True)
    finally:
        algo.stop()
        if started:
            ray.shutdown()
    return curve


# ---------------------------------------------------------------------------------------------------------
# output and CLI


def write_curve(curve: list[dict[str, Any]], cfg: Config, out_dir: Path) -> None:
    """``curve.csv``, ``curve.png`` (success per iteration against chance) and ``config.json`` under out_dir."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    with open(out_dir / "curve.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CURVE_COLUMNS)
        writer.writeheader()
        writer.writerows(curve)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["env_steps"] // 2 for r in curve], [r["success"] for r in curve], marker="o", ms=3, label="PPO (RLlib)")
    ax.axhline(1.0 / cfg.candidates, color="grey", ls="--", label=f"chance (1/{cfg.candidates})")
    ax.set(xlabel="games played", ylabel="success", ylim=(0, 1.02),
           title=f"referential game, C={cfg.candidates}, n={cfg.bits} bits, sigma={cfg.sigma:g}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out_dir / "curve.png", dpi=120)
    plt.close(fig)


def main(cfg: Config) -> list[dict[str, Any]]:
    """Train, print and write the learning curve under ``cfg.out_dir``."""
    print(f"games per iteration {cfg.episodes_per_iteration} ({2 * cfg.episodes_per_iteration} env steps), "
          f"passages {cfg.passages} of {cfg.passage_length} ids over {cfg.vocab_size}, {cfg.bits} bits per message, "
          f"chance {1 / cfg.candidates:.3f}", flush=True)
    out = Path(cfg.out_dir).resolve()
    tracker = open_tracker(cfg.tracking, cfg.tracking_uri, out.parent, experiment="emergent-rllib", run_name=out.name,
                           params=asdict(cfg))
    try:
        curve = train_ppo(cfg)
    except BaseException as exc:
        tracker.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    write_curve(curve, cfg, out)
    tracker.log_history([{**r, "step": r["iteration"]} for r in curve])  # the learning curve, by iteration
    tracker.log_artifacts(out)
    tracker.finish()
    print(f"wrote {cfg.out_dir}/curve.csv, curve.png", flush=True)
    return curve


if __name__ == "__main__":
    import sys

    from calm.cli import parse_config

    sys.exit(0 if main(parse_config(Config, prog="python -m experiments.emergent_rllib",
                                     description=__doc__.split("\n")[0])) else 1)
