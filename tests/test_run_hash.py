"""Which settings name a run is said on the Config's fields (``unhashed``), and the hashes of existing runs do not
move: a run directory made before the fields carried that metadata still resumes."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import pytest

from experiments.common.config import SweepConfig, settings_hash, unhashed

# the settings hashes of each study's default config, as computed by the hand-kept exclusion lists they replace
DEFAULT_HASHES = {
    "referential_game": "552d43ff5f",
    # issue 29 moved separation's rate oracle to 512 validation passages (pilot_passages 64 -> 512): the rows change,
    # so the default run is a new one; with the old pilot_passages the hash is the old one (tested below)
    "reconstruction": "d92bea7020",
    "alignment": "8bebeb36d6",
    "relay": "a47113b892",
    "broadcast": "f6bc4a2956",
    "dialogue": "b26c13f62e",
    "scaling_k": "daa4106b2c",
    "calm_scaling": "7977c9f7ec",
}


@pytest.mark.parametrize("study", sorted(DEFAULT_HASHES))
def test_default_run_hashes_are_unchanged(study):
    module = importlib.import_module(f"experiments.{study}")
    assert settings_hash(module.Config()) == DEFAULT_HASHES[study]


def test_reconstruction_prior_settings_name_the_run_only_when_changed():
    from experiments.reconstruction import Config

    assert settings_hash(Config(pilot_passages=64)) == "d50fffbb60"  # the default before issue 29: unchanged
    assert settings_hash(Config(lm_steps=10, pilot_passages=64)) == "76ed41f780"
    assert settings_hash(Config(lm_steps=10, prior_weight=2.0, pilot_passages=64)) == "8407840745"
    assert settings_hash(Config(lm_steps=10)) == "460835b46d"
    assert settings_hash(Config(sigmas=(0.5,), passage_length=64)) == "138d372f06"
    assert settings_hash(Config(lm_steps=300)) == settings_hash(Config())  # set to its default: the same run
    # issue 29's separation settings name the run only away from their defaults
    assert settings_hash(Config(separation_menu="standard", separation_lm_oracle="fill", separation_header="fixed",
                                separation_lm_mix=0.0)) == settings_hash(Config())
    for changed in (dict(separation_menu="fine"), dict(separation_lm_oracle="exact"),
                    dict(separation_header="huffman"), dict(separation_lm_mix=0.5)):
        assert settings_hash(Config(**changed)) != settings_hash(Config())


def test_referential_non_default_hash_is_unchanged():
    from experiments.referential_game import Config

    assert settings_hash(Config(episodes=64, sigmas=(1.0,))) == "8ea3c3dce9"


@dataclass
class Toy(SweepConfig):
    episodes: int = 8
    """changes every row"""
    sigmas: tuple[float, ...] = unhashed((0.5,))
    """a grid axis"""
    beam: int = unhashed(4, if_changed=True)
    """added later"""


def test_grid_axes_and_places_do_not_name_the_run():
    base = settings_hash(Toy())
    assert settings_hash(Toy(sigmas=(0.1, 0.5), results_dir="elsewhere", max_concurrent=4)) == base
    assert settings_hash(Toy(episodes=16)) != base


def test_an_if_changed_field_names_the_run_only_away_from_its_default():
    assert settings_hash(Toy(beam=4)) == settings_hash(Toy())
    assert settings_hash(Toy(beam=8)) != settings_hash(Toy())


@dataclass
class Redeclared(Toy):
    max_concurrent: int = 4
    """a base field with the study's own default: still not in the hash"""


def test_a_redeclared_field_keeps_its_mark():
    assert settings_hash(Redeclared(max_concurrent=1)) == settings_hash(Redeclared())
