"""What every study's Config holds (``SweepConfig``), and which of its settings name a run.

Which fields enter the run's settings hash is said once, on the fields: ``unhashed(...)`` marks a field that
changes no row (where things go, how fast they run) or a grid axis (a rerun with more sigmas or seeds adds rows
to the same run); ``unhashed(..., if_changed=True)`` a field that names the run only when set away from its
default (added after runs were made: those keep their hash).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from calm.checks import check_numbers, in_range, merge_duplicates
from calm.tracking import check_tracking

__all__ = ["SweepConfig", "TrackerName", "check_run_name", "default_tracking", "hash_mode", "settings_hash", "unhashed"]

TrackerName = Literal["mlflow", "wandb", "none"]
"""the values of --tracking (``calm.tracking.TRACKERS``)"""

# field metadata key: False (never in the run hash), "if_changed" (in it only when set away from its default,
# so that runs made before the field existed keep their hash); absent: in the hash
HASH = "latentcomm_hash"


def default_tracking() -> Any:
    """The ``tracking`` field of a study's Config: unhashed, defaulting to ``LATENTCOMM_TRACKING`` or mlflow."""
    return unhashed(os.environ.get("LATENTCOMM_TRACKING", "mlflow"))


def unhashed(default: Any = dataclasses.MISSING, *, if_changed: bool = False) -> Any:
    """A Config field that does not name the run: where things go, how fast they run, or a grid axis (a rerun
    with more values adds rows to the same run). ``if_changed``: it names the run only when set away from its
    default (a setting added after runs were made: those runs keep their hash)."""
    return field(default=default, metadata={HASH: "if_changed" if if_changed else False})


@dataclass
class SweepConfig:
    """What every experiment's config holds: where runs go, the autoencoder, Ray and the sweep's pace.

    Experiments subclass it with their own grid axes and settings (``experiments.referential_game.Config``).
    """

    run_name: str | None = unhashed(None)
    """run directory name under results_dir; default <experiment>-<hash of the settings that change rows>"""
    results_dir: str = unhashed("results")
    """where run directories go"""
    runs_dir: str = unhashed("runs")
    """where the autoencoder trained when no checkpoint is given is cached"""
    checkpoint: str | None = None
    """autoencoder checkpoint directory (ours; a released CALM autoencoder once converted by python -m calm.convert);
    none: train the tiny one once and cache it under runs_dir"""
    corpus: str = "kjv+shakespeare"
    """corpus of passages and autoencoder training data (see calm.data), tokenised with the checkpoint's tokenizer
    (a released CALM's Llama-3 one: wikitext103, or text:<path> offline)"""
    tokenizer: str = "bpe:8192"
    """tokenizer spec when training an autoencoder (a checkpoint brings its own)"""
    ae_preset: str = "tiny"
    """autoencoder size preset (calm.autoencoder.PRESETS) when training one"""
    ae_latent_dim: int | None = None
    """override the preset's latent size l"""
    ae_hidden_size: int | None = None
    """override the preset's width d"""
    ae_intermediate_size: int | None = None
    """override the preset's SwiGLU width"""
    ae_steps: int = 3000
    """optimiser steps when training the autoencoder"""
    ae_batch_size: int = 256
    """sequences (chunks of K tokens) per autoencoder training step"""
    ae_time_limit: float = 0.0
    """stop autoencoder training after this many seconds (0: no limit). A limit makes the learning-rate
    schedule follow the clock, so the weights (and every result) then depend on the machine's speed"""
    ae_seed: int = 0
    """seed of autoencoder training and of the passage draws"""
    agent_pairs: int = unhashed(1)
    """speaker/listener actor pairs serving the trials"""
    num_gpus: str = unhashed("auto")
    """GPUs per agent actor: auto (1 or a share where Ray sees GPUs, else 0) or a number"""
    address: str = unhashed("auto")
    """Ray: auto joins a running cluster (RAY_ADDRESS or `ray start`) else starts a local one; local; or an address"""
    num_cpus: int | None = unhashed(None)
    """CPUs of a local Ray (default: all cores)"""
    max_concurrent: int = unhashed(2)
    """trials running at once"""
    trial_cpus: float = unhashed(0.5)
    """logical CPUs per trial (the env and driver loop; the models run in the agents)"""
    max_trials: int | None = unhashed(None)
    """run at most this many of the missing trials, then stop (a rerun continues)"""
    plots: bool = unhashed(True)
    """write the PNG plots"""
    overwrite: bool = unhashed(False)
    """rewrite a finished run's results and reports from its rows (a finished run is otherwise left as it is)"""
    tracking: TrackerName = default_tracking()
    """experiment tracker: mlflow (a local store, results_dir/mlflow.db, unless --tracking-uri), wandb (pip install
    'latentcomm[wandb]') or none (default from LATENTCOMM_TRACKING, else mlflow)"""
    tracking_uri: str = unhashed("")
    """MLflow store or server (sqlite:///path/mlflow.db, http://host:5000); empty: results_dir/mlflow.db"""

    full: bool = unhashed(False)
    """the study's full grid (its FULL settings, each where it is still at its default): the larger run for a GPU
    or a cluster, where a study's default was trimmed to fit a laptop (a study with no FULL runs its default)"""

    ALLOW_INF: ClassVar[tuple[str, ...]] = ()
    """fields whose values may be +-inf (an SNR of inf dB: no noise); NaN is never allowed"""
    FULL: ClassVar[dict[str, Any]] = {}
    """what ``--full`` sets: the grids and sizes a study's default trimmed to fit a laptop (docs/results.md)"""

    def __post_init__(self) -> None:
        if self.full:
            self._apply_full()
        check_numbers(self, allow_inf=self.ALLOW_INF)
        # a value given twice on a grid axis would run one grid point twice and report it as two rows
        merge_duplicates(self, *(f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), tuple)))
        _check_shared_ranges(self)
        for name in ("ae_steps", "ae_batch_size", "agent_pairs", "max_concurrent"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if self.num_gpus != "auto":
            try:
                gpus = float(self.num_gpus)
                if not (math.isfinite(gpus) and gpus >= 0):
                    raise ValueError
            except ValueError:
                raise ValueError(f"num_gpus must be 'auto' or a number >= 0, got {self.num_gpus!r}") from None
            if gpus > 0 and self._starts_local_ray():  # agents would wait for a GPU forever
                import torch

                if not torch.cuda.is_available():
                    raise ValueError(f"--num-gpus {self.num_gpus}: this machine has no CUDA GPU for a local Ray; use "
                                     "--num-gpus auto (CPU here) or --address of a cluster with GPUs")
        if not self.ae_time_limit >= 0:
            raise ValueError(f"ae_time_limit must be >= 0 seconds, got {self.ae_time_limit}")
        if not self.trial_cpus > 0:
            raise ValueError(f"trial_cpus must be > 0, got {self.trial_cpus}")
        if self.max_trials is not None and self.max_trials < 0:
            raise ValueError(f"max_trials must be >= 0 or none, got {self.max_trials}")
        if self.run_name is not None:
            check_run_name(self.run_name)
        check_tracking(self.tracking, self.tracking_uri)
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"--num-cpus must be >= 1 or none (all cores), got {self.num_cpus}: with no CPU no trial "
                             "ever starts")
        if self.num_cpus is not None and self.trial_cpus > self.num_cpus:
            raise ValueError(f"--trial-cpus {self.trial_cpus} is more than --num-cpus {self.num_cpus}: no trial could "
                             "ever start")

    def _apply_full(self) -> None:
        """Set each ``FULL`` field still at its default (a value given on the command line wins)."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        for name, value in self.FULL.items():
            if name not in fields:
                raise ValueError(f"{type(self).__name__}.FULL names {name!r}, which is not a setting")
            if getattr(self, name) == _default(fields[name]):
                setattr(self, name, value)

    def _starts_local_ray(self) -> bool:
        """Whether this run would start Ray on this machine (no cluster address given or found)."""
        import os

        if self.address == "local":
            return True
        return (self.address == "auto" and not os.environ.get("RAY_ADDRESS")
                and not Path("/tmp/ray/ray_current_cluster").exists())


# settings several studies share, checked wherever a Config has them: (low, high) bounds, closed
_SHARED_RANGES: dict[str, tuple[float, float]] = {
    "erasure_p": (0.0, 1.0),
    "sigmas": (0.0, 1e4),  # noise std; 1e4 is an SNR of -80 dB
    "snrs_db": (-80.0, 200.0),
    "listener_snrs_db": (-80.0, 200.0),
}


def _check_shared_ranges(cfg: Any) -> None:
    for name, (low, high) in _SHARED_RANGES.items():
        if hasattr(cfg, name):
            values = getattr(cfg, name)
            values = values if isinstance(values, tuple) else (values,)
            in_range(name, tuple(v for v in values if not (name in cfg.ALLOW_INF and v == math.inf)), low, high)
    if getattr(cfg, "fading_block", None) is not None and cfg.fading_block < 1:
        raise ValueError(f"--fading-block must be >= 1 symbol or none (one gain per message), got {cfg.fading_block}")
    if hasattr(cfg, "num_passages") and cfg.num_passages < 2:
        raise ValueError(f"--num-passages must be >= 2 (a game draws its distractors from the other passages), "
                         f"got {cfg.num_passages}")


def check_run_name(name: str) -> str:
    """``name`` if it names a directory right under the results directory, else ValueError."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0") or name != name.strip():
        raise ValueError(f"run_name must be a plain directory name (no '/', not '.' or '..', no surrounding spaces), "
                         f"got {name!r}")
    return name


def settings_hash(cfg: Any) -> str:
    """Hash of every setting of the dataclass ``cfg`` that changes a row: every field but those marked
    ``unhashed`` (an ``if_changed`` one only when it differs from its default). A mark holds for subclasses:
    a study that re-declares ``max_concurrent`` with its own default keeps it out of the hash."""
    values = asdict(cfg)
    key = {}
    for f in dataclasses.fields(cfg):
        mode = hash_mode(type(cfg), f.name)
        if mode is False or (mode == "if_changed" and values[f.name] == _default(f)):
            continue
        key[f.name] = values[f.name]
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def hash_mode(cls: type, name: str) -> bool | str:
    """How field ``name`` of the Config class ``cls`` enters the hash: the nearest mark along the class's
    bases (True where none is set)."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and HASH in f.metadata:
            return f.metadata[HASH]
    return True


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
