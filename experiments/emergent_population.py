"""Populations: does training with several partners make a protocol that new partners understand? (issue 31)

    python -m experiments.emergent_population            # P = 1 and 3, 0 and 6 dB, seed 0, learned-continuous
    python -m experiments.emergent_population --full     # P = 1 2 4 8, -6 0 6 12 dB, seeds 0 1 2, 4,000 steps
    python -m experiments.emergent_population --help

P speakers and P listeners learn the referential game together through the noisy channel, each step in a random
pairing (``protocols.emergent_population.train_population``; P = 1 is a single pair, ``train_pair``). They see the
frozen CALM autoencoder's latent means of each passage, flattened, as the emergent study's agents do
(``experiments.emergent``). Per (protocol, P, seed) two populations are trained apart: A with seed s and B with
seed s + 1000. Rows, each at one evaluation SNR, C candidates, n channel uses:
- ``trained``: a speaker with a listener of its own population (all P x P pairings of A and of B: every pair met
  in training);
- ``new-partner``: a speaker of A with a listener of B, and of B with A (2 P^2 pairings that never met);
- ``new-listener``: each speaker of A and B with a newcomer, a fresh listener trained for ``newcomer_steps``
  against that frozen speaker: how fast a new partner learns the protocol.
Each pairing plays its own ``episodes`` games on the held-out passages; a row pools them, with a 95% Wilson
interval and the lowest and highest pairing. Chance is 1/C. ``steps`` counts the updates of each agent (B games
each), so a population of P costs P times a pair's training. Populations and newcomers are trained once and
cached under runs_dir (``experiments.emergent_population_trials``). ``experiments.emergent_population_report``
writes summary.md and success_vs_snr.png.

Laptop default (2026-12-07, 2-core CPU, shared with other jobs): docs/emergent_population.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from calm.checks import in_range, positive_ints
from experiments.common.config import SweepConfig, unhashed
from experiments.common.links import calm_features, game_passages, open_autoencoder
from experiments.common.sweep import Plan, Run, Study, SweepResult, cli, run_sweep
from experiments.emergent_population_report import write_report
from experiments.emergent_population_trials import B_OFFSET, PAIRINGS, POPULATION_PROTOCOLS, play_trial

__all__ = ["COLUMNS", "STUDY", "Config", "main", "trial_grid"]

ProtocolName = Literal["learned-continuous", "learned-gumbel", "learned-reinforce"]
PairingName = Literal["trained", "new-partner", "new-listener"]
CHANNELS = ("awgn", "rayleigh", "erasure")
COLUMNS = ["protocol", "channel", "channel_uses", "candidates", "size", "pairing", "snr_db", "sigma", "success",
           "success_ci_low", "success_ci_high", "episodes", "pairs_played", "pair_min", "pair_max", "chance",
           "train_success", "train_steps", "seed", "population_a", "population_b", "checkpoint"]


@dataclass
class Config(SweepConfig):
    """The population study. Grid axes: protocols x sizes x seeds x snrs_db x pairings."""

    FULL: ClassVar[dict[str, Any]] = {"sizes": (1, 2, 4, 8), "snrs_db": (-6.0, 0.0, 6.0, 12.0), "seeds": (0, 1, 2),
                                      "steps": 4000}
    ALLOW_INF: ClassVar[tuple[str, ...]] = ("snrs_db", "train_snr_db")

    passage_length: int = 16
    """L, tokens per passage (a multiple of the autoencoder's K)"""
    protocols: tuple[ProtocolName, ...] = unhashed(("learned-continuous",))
    """learned protocols: learned-continuous (n real symbols), learned-gumbel / learned-reinforce (m = n / vocab_bits
    discrete symbols as BPSK bits)"""
    sizes: tuple[int, ...] = unhashed((1, 3))
    """P, speakers and listeners per population; --full: 1 2 4 8"""
    pairings: tuple[PairingName, ...] = unhashed(PAIRINGS)
    """row kinds: trained, new-partner, new-listener (module docstring)"""
    snrs_db: tuple[float, ...] = unhashed((0.0, 6.0))
    """evaluation SNRs in dB (inf: noiseless); --full: -6 0 6 12"""
    seeds: tuple[int, ...] = unhashed((0,))
    """seeds of population A (B: seed + 1000) and of the games; --full: 0 1 2"""
    channel_uses: int = 8
    """n, real channel uses per message"""
    candidates: int = 8
    """C, candidates per evaluation game (chance 1/C)"""
    channel: Literal["awgn", "rayleigh", "erasure"] = "awgn"
    """awgn; rayleigh (one gain per message, told to the receiver); erasure (then AWGN)"""
    erasure_p: float = 0.25
    """erasure probability of the erasure channel, in [0, 1)"""
    train_snr_db: tuple[float, ...] = (-9.0, 20.0)
    """training SNR in dB: one value, or (low, high) drawn uniformly in dB per message"""
    told_snr: bool = False
    """every agent is told each message's SNR"""
    train_candidates: int = 16
    """C of every training game"""
    steps: int = 1000
    """optimiser steps per agent (a population of P costs P times a pair); --full: 4000"""
    newcomer_steps: int = 200
    """optimiser steps of a newcomer listener against a frozen speaker"""
    batch_size: int = 128
    """training games per pairing per step"""
    lr: float = 3e-3
    """Adam learning rate (cosine decay to 10%), in (0, 1]"""
    hidden_size: int = 128
    """width of every agent's MLPs"""
    vocab_bits: int = 2
    """b, bits per discrete symbol (V = 2^b); channel_uses must be a multiple of it for discrete protocols"""
    entropy_coef: float = 0.01
    """REINFORCE entropy bonus weight"""
    episodes: int = 1024
    """evaluation games per pairing"""
    eval_batch: int = unhashed(512)
    """games per forward in evaluation (changes no result)"""
    num_passages: int = 2000
    """held-out (test split) passages the games draw from"""
    fit_passages: int = 4000
    """training passages the populations train on"""
    max_concurrent: int = unhashed(2)
    """trials at once (a trial may train a population: one core each)"""
    trial_cpus: float = unhashed(1.0)
    """logical CPUs per trial"""

    def __post_init__(self) -> None:
        super().__post_init__()  # finite numbers, shared ranges, duplicate grid values merged
        positive_ints(self, "passage_length", "channel_uses", "steps", "newcomer_steps", "batch_size", "hidden_size",
                      "episodes", "eval_batch", "num_passages", "fit_passages")
        for name, allowed in (("protocols", tuple(POPULATION_PROTOCOLS)), ("pairings", PAIRINGS)):
            values = getattr(self, name)
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values}")
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS}, got {self.channel!r}")
        for name, low in (("sizes", 1), ("seeds", 0)):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
                raise ValueError(f"{name} must hold integers >= {low}, got {values}")
        clash = sorted(s for s in self.seeds if s + B_OFFSET in self.seeds)
        if clash:  # population B of seed s would be population A of seed s + B_OFFSET
            raise ValueError(f"seeds {clash} and {[s + B_OFFSET for s in clash]} differ by {B_OFFSET}: population B "
                             "of the first is population A of the second; pick other seeds")
        if not self.snrs_db or any(s == -float("inf") for s in self.snrs_db):
            raise ValueError(f"snrs_db must hold at least one SNR in dB (inf: noiseless), got {self.snrs_db}")
        train = self.train_snr_db
        if len(train) not in (1, 2) or (len(train) == 2 and not (train[0] <= train[1] < float("inf"))):
            raise ValueError(f"train_snr_db must be one SNR in dB or a finite (low, high) range, got {train}")
        in_range("train_snr_db", tuple(t for t in train if t != float("inf")), -80.0, 200.0)
        in_range("erasure_p", self.erasure_p, 0.0, 1.0, high_open=True)
        in_range("lr", self.lr, 0.0, 1.0, low_open=True)
        in_range("entropy_coef", self.entropy_coef, 0.0, None)
        positive_ints(self, "vocab_bits")
        in_range("vocab_bits", self.vocab_bits, 1, 8)
        positive_ints(self, "candidates", "train_candidates", minimum=2)
        if set(self.protocols) - {"learned-continuous"} and self.channel_uses % self.vocab_bits:
            raise ValueError(f"channel_uses {self.channel_uses} is not a multiple of vocab_bits={self.vocab_bits} "
                             "(discrete messages send m = n / vocab_bits symbols)")
        most = max(self.candidates, self.train_candidates)
        if self.num_passages < most or self.fit_passages < most:
            raise ValueError(f"num_passages ({self.num_passages}) and fit_passages ({self.fit_passages}) must be >= "
                             f"the most candidates of a game ({most})")


def trial_key(spec: dict[str, Any]) -> str:
    """``<protocol>-P<size>-<pairing>-snr<dB>-seed<seed>`` (file-name safe)."""
    return f"{spec['protocol']}-P{spec['size']}-{spec['pairing']}-snr{spec['snr_db']:g}-seed{spec['seed']}"


def trial_grid(cfg: Config) -> list[dict[str, Any]]:
    """Every grid point. Largest populations first and the pairings of one (P, seed) next to each other: the first
    two trials need populations A and B of one size and train them at once, one per core (``ensure``)."""
    order = [p for p in ("new-partner", "new-listener", "trained") if p in cfg.pairings]
    grid = [{"protocol": protocol, "size": int(size), "seed": int(seed), "snr_db": float(snr), "pairing": pairing}
            for size in sorted(cfg.sizes, reverse=True) for seed in cfg.seeds for protocol in cfg.protocols
            for snr in cfg.snrs_db for pairing in order]
    for spec in grid:
        spec["key"] = trial_key(spec)
    return grid


def prepare(cfg: Config, run: Run) -> Plan:
    """Draw the passages and compute their CALM features once; the trials train (or reload) the populations."""
    model, tok = open_autoencoder(run.checkpoint, cfg.passage_length)
    train, test = game_passages(cfg, tok)
    banks = [calm_features(model, p) for p in (train, test)]  # the emergent study's "calm" features
    settings = {**asdict(cfg), "checkpoint_id": run.checkpoint_id,
                "pairs_dir": str(Path(cfg.runs_dir).expanduser().resolve())}
    pops = 2 * len(cfg.protocols) * len(cfg.sizes) * len(cfg.seeds)
    agents = 2 * len(cfg.protocols) * sum(cfg.sizes) * len(cfg.seeds)
    print(f"[run] features D={banks[0].shape[1]}; {pops} populations ({agents} speaker-listener slots) of "
          f"{cfg.steps} steps per agent at C={cfg.train_candidates} (trained once, cached)", flush=True)
    return Plan(grid=trial_grid(cfg), trial=play_trial,
                shared={"settings": settings, "data": {"train": banks[0], "test": banks[1]}},
                describe=f"{len(cfg.protocols)} protocols x {len(cfg.sizes)} sizes x {len(cfg.seeds)} seeds x "
                         f"{len(cfg.snrs_db)} SNRs x {len(cfg.pairings)} pairings, {pops} populations",
                record={"feature_dim": int(banks[0].shape[1]), "populations": pops},
                models=lambda frame: {f"population {p}": Path(settings["pairs_dir"]) / p for p in
                                      set(frame["population_a"]) | set(frame["population_b"])
                                      if (Path(settings["pairs_dir"]) / p).is_dir()})


def report(cfg: Config, frame, run: Run, plan: Plan) -> None:
    """summary.md and success_vs_snr.png of the finished rows."""
    if len(frame):
        write_report(frame, run.dir, plots=cfg.plots)


STUDY = Study(prefix="emergent-population", columns=COLUMNS, prepare=prepare, report=report)


def main(cfg: Config) -> SweepResult:
    """Train the missing populations and newcomers, play the missing grid points, write the results and reports."""
    return run_sweep(cfg, STUDY)


if __name__ == "__main__":
    raise SystemExit(cli(main, Config, prog="python -m experiments.emergent_population",
                         description=__doc__.split("\n\n")[0]))
