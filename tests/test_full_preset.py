"""``--full``: a study's larger grid, set where the user left a setting at its default."""

from __future__ import annotations

import pytest

from experiments.common.config import settings_hash
from experiments.referential_game import Config


def test_full_sets_the_full_grid_where_the_default_stands():
    assert Config().seeds == (0, 1)
    assert Config(full=True).seeds == (0, 1, 2)
    assert Config(full=True, seeds=(7,)).seeds == (7,)  # a value given wins


def test_full_and_default_name_the_same_run_when_only_grid_axes_differ():
    """The trimmed axis (seeds) is a grid axis: the full run adds rows to the default's run directory."""
    assert settings_hash(Config(full=True)) == settings_hash(Config())


def test_a_full_setting_must_be_a_field():
    class Broken(Config):
        FULL = {"no_such_setting": 1}

    with pytest.raises(ValueError, match="no_such_setting"):
        Broken(full=True)


def test_full_flag_on_the_command_line():
    from calm.cli import parse_config

    assert parse_config(Config, ["--full"]).seeds == (0, 1, 2)
    assert parse_config(Config, ["--full", "--seeds", "3"]).seeds == (3,)
