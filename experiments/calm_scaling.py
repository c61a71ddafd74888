"""Where would CALM win? Brier-1 and BrierLM against training FLOPs for CALM (K = 2, 4) and the token baseline.

    python -m experiments.calm_scaling                  # 3 families x size xs x 2 budgets on local Ray
    python -m experiments.calm_scaling --full           # 3 families x 3 sizes x 3 budgets (27 models)
    python -m experiments.calm_scaling --help
    python -m experiments.calm_scaling --budgets 1e12 2e12 4e12 8e12   # one more budget: same run, more rows

One trial trains one model from scratch to one training-FLOPs budget (its own warm-up and cosine schedule,
Chinchilla-style, not a checkpoint along a longer run) and scores it on the same held-out windows: Brier-1..4
and BrierLM with per-window estimates (for the bootstrap), CALM also with the on-manifold fraction of its head's
samples. Families: ``baseline`` (the token transformer), ``calm-k2`` (the tiny-k2 energy transformer on a K = 2,
l = 16 autoencoder), ``calm-k4`` (the tiny one on K = 4, l = 32); sizes ``xs``/``s``/``m`` scale the
backbone's width and depth alike in every family (``m`` is the tiny preset); the recipe is the engine's
(``experiments.common.lm_budget``). The autoencoders are trained once and cached under runs_dir; their training
FLOPs are reported, not charged (as the paper counts).

``experiments.calm_scaling_report`` fits, per family, a power law ``1 - score = a C^-b`` to the compute
frontier (the best size at each budget) with a bootstrap over held-out windows, plots it and extrapolates
where CALM's line crosses the baseline's (or says it cannot). Trials run as a Ray Tune grid (one CPU each,
``max_concurrent`` at once); a killed run resumes where it stopped; rows land in results/<run>/.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from calm.checks import in_range, positive_ints
from experiments.calm_scaling_report import write_report
from experiments.common.config import SweepConfig, unhashed
from experiments.common.lm_budget import SIZES, check_budgets, check_train_device, train_and_score
from experiments.common.models import checkpoint_id, ensure_checkpoint
from experiments.common.sweep import Plan, Run, Study, SweepResult, cli, run_sweep

__all__ = ["COLUMNS", "STUDY", "Config", "main", "trial_grid"]

Family = Literal["baseline", "calm-k2", "calm-k4"]
FAMILIES = ("baseline", "calm-k2", "calm-k4")
# the autoencoder of each CALM family: (preset, overrides); kl 0.01 widens the posterior the head learns from
AUTOENCODERS = {"calm-k2": ("tiny-k2", {"kl_weight": 0.01}), "calm-k4": ("tiny", {"latent_dim": 32, "kl_weight": 0.01})}
SCORES = ("brier_1", "brier_2", "brier_3", "brier_4", "brier_lm")
COLUMNS = ["family", "size", "budget", "params", "steps", "tokens", "flops", "flops_per_token", *SCORES,
           *[f"{s}_ci_low" for s in SCORES], *[f"{s}_ci_high" for s in SCORES], "on_manifold", "train_seconds",
           "seed", "per_window"]


@dataclass
class Config(SweepConfig):
    """The scaling study. Grid axes: families x sizes x budgets."""

    FULL: ClassVar[dict[str, Any]] = {"sizes": ("xs", "s", "m"), "budgets": (1e12, 2.5e12, 6.25e12)}

    tokenizer: str = "bpe:2048"
    """tokenizer of every model (a small vocabulary keeps CPU training cheap)"""
    ae_steps: int = 1500
    """autoencoder training steps (K = 2 and K = 4, once each, cached under runs_dir)"""
    families: tuple[Family, ...] = unhashed(FAMILIES)
    """model families to train"""
    sizes: tuple[Literal["xs", "s", "m"], ...] = unhashed(("xs",))
    """backbone sizes (experiments.common.lm_budget.SIZES: xs d=64 x 2 layers, s d=96 x 3, m d=128 x 4 = the
    tiny presets); xs, the frontier of nearly every family and budget, on a laptop; --full adds s and m"""
    budgets: tuple[float, ...] = unhashed((1e12, 2.5e12))
    """training-FLOPs budgets (analytic, calm.flops; each model is trained from scratch to each); --full adds
    6.25e12. One that would train a model more than 100,000 optimizer steps (lm_budget.MAX_STEPS) is refused
    without --force"""
    batch_size: int = 8
    """windows of 256 tokens per micro-batch, every family"""
    calm_grad_accum: int = 4
    """CALM micro-batches per optimiser step (K = 2: 4,096 patches per step)"""
    lr: float = 2e-3
    """peak learning rate (10% warm-up, cosine to 10%), in (0, 1]"""
    eval_windows: int = 32
    """held-out windows of 256 tokens every model is scored on (the bootstrap resamples them)"""
    brier_samples: int = 4
    """sampled continuations per position in the Brier estimates"""
    seed: int = 0
    """seed of every model's initialisation and batches"""
    # the study trains its own autoencoders and runs anywhere: neither field names the run
    checkpoint: str | None = unhashed(None)
    """autoencoder checkpoint directory; none: train the tiny one once and cache it under runs_dir"""
    device: Literal["cpu", "cuda"] = unhashed("cpu")
    """where each model trains and is scored (cuda: scripts/gpu_check.sh's larger points; the CPU study never
    needs it). Not part of the run name: give a cuda run its own --run-name"""
    max_concurrent: int = unhashed(2)
    """models training at once (one CPU thread each)"""
    trial_cpus: float = unhashed(1.0)
    """logical CPUs per trial"""
    force: bool = unhashed(False)
    """train budgets above the step limit anyway"""

    def __post_init__(self) -> None:
        super().__post_init__()  # finite numbers, duplicate grid values merged
        positive_ints(self, "batch_size", "calm_grad_accum")
        positive_ints(self, "seed", minimum=0)
        if self.eval_windows < 2:
            raise ValueError("eval_windows must be >= 2 (the intervals bootstrap over windows)")
        if self.brier_samples < 2:
            raise ValueError(f"brier_samples must be >= 2, got {self.brier_samples}")
        if not self.budgets or any(not b > 0 for b in self.budgets):
            raise ValueError(f"budgets must be positive FLOPs, got {self.budgets}")
        for name, allowed in (("families", FAMILIES), ("sizes", tuple(SIZES))):
            values = getattr(self, name)
            if not values or any(v not in allowed for v in values):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {values}")
        in_range("lr", self.lr, 0, 1, low_open=True)
        check_train_device(self.device)
        check_budgets(self, {f: self._autoencoder(f) for f in self.families if f != "baseline"})

    def _autoencoder(self, family: str) -> dict[str, Any]:
        """``calm.autoencoder.preset`` arguments of the family's autoencoder (as ``prepare`` trains it)."""
        preset, overrides = AUTOENCODERS[family]
        fields = {k: v for k, v in (("latent_dim", self.ae_latent_dim), ("hidden_size", self.ae_hidden_size),
                                    ("intermediate_size", self.ae_intermediate_size)) if v is not None}
        return {"name": preset, **overrides, **fields}


def trial_grid(cfg: Config) -> list[dict[str, Any]]:
    """One point per (family, size, budget), cheapest budget first (a short run has the small models)."""
    grid = [{"family": f, "size": s, "budget": float(b)} for b in sorted(cfg.budgets) for f in cfg.families
            for s in cfg.sizes]
    for spec in grid:
        spec["key"] = f"{spec['family']}-{spec['size']}-C{spec['budget']:.3g}"
    return grid


def _trial(spec: dict[str, Any], **shared: Any) -> dict:
    return train_and_score(spec, **shared)


def prepare(cfg: Config, run: Run) -> Plan:
    """Train (or reload) the autoencoder of every CALM family once; the trials train the language models."""
    autoencoders = {}
    for family in cfg.families:
        if family != "baseline":
            preset, overrides = AUTOENCODERS[family]
            path = ensure_checkpoint(replace(cfg, ae_preset=preset, checkpoint=None), overrides=overrides)
            autoencoders[family] = str(path)
    return Plan(grid=trial_grid(cfg), trial=_trial, shared={"settings": asdict(cfg), "autoencoders": autoencoders},
                record={"autoencoders": {f: checkpoint_id(Path(p)) for f, p in autoencoders.items()}},
                describe=f"{len(cfg.families)} families x {len(cfg.sizes)} sizes x {len(cfg.budgets)} budgets, "
                         f"{cfg.max_concurrent} models at once")


def report(cfg: Config, frame, run: Run, plan: Plan) -> None:
    """The fits (fits.json), summary.md and the plot of the finished rows."""
    if len(frame):
        write_report(frame, run.dir, plots=cfg.plots, seed=cfg.seed)


# no autoencoder checkpoint names the run: the study trains its own (the autoencoders' ids go to config.json)
STUDY = Study(prefix="calm-scaling", columns=COLUMNS, prepare=prepare, report=report, checkpoint=False)


def main(cfg: Config) -> SweepResult:
    """Train the missing grid points, then write results.csv, the fits (fits.json) and the plot."""
    return run_sweep(cfg, STUDY)


if __name__ == "__main__":
    raise SystemExit(cli(main, Config, prog="python -m experiments.calm_scaling",
                         description=__doc__.split("\n\n")[0]))
