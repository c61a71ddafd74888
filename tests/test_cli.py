"""calm.cli: the one dataclass-to-command-line parser (calm.train and the experiments)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest

from calm.cli import add_dataclass_args, build_parser, field_docs, given_values, parse_config

Mode = Literal["fast", "slow"]


@dataclass
class Base:
    seed: int = 0
    """seeds everything"""
    name: str = "run"
    """run name; 10% of it is
    wrapped over two lines"""


@dataclass
class Config(Base):
    lr: float = 0.1
    """learning rate"""
    steps: int = 10
    checkpoint: str | None = None
    """checkpoint directory (none: train from scratch)"""
    budget: int | None = 4
    """channel uses (none: as many as the passage needs)"""
    plots: bool = True
    """write PNG plots"""
    mode: Mode = "fast"
    """how to run"""
    sigmas: tuple[float, ...] = (0.0, 0.5)
    """noise standard deviations"""
    modes: tuple[Mode, ...] = ("fast",)
    """several modes"""
    hops: list[int] = field(default_factory=lambda: [1])
    """hops per chain"""
    seed: int = 7
    """a redefined field: this doc wins"""

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"Config.lr must be > 0, got {self.lr}")


@dataclass
class Required:
    size: int
    """no default: a required flag"""
    flag: bool = False


def _exit(capsys, fn) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        fn()
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_defaults_and_types():
    cfg = parse_config(Config, [])
    assert cfg == Config()
    cfg = parse_config(Config, ["--lr", "1e-3", "--steps", "5", "--name", "x", "--seed", "3"])
    assert (cfg.lr, cfg.steps, cfg.name, cfg.seed) == (1e-3, 5, "x", 3)
    assert isinstance(cfg.steps, int) and isinstance(cfg.lr, float)
    assert parse_config(Config, ["--sigmas", "inf"]).sigmas == (float("inf"),)


def test_lists_are_the_fields_container():
    cfg = parse_config(Config, ["--sigmas", "0", "1.5", "2", "--hops", "1", "3", "--modes", "slow", "fast"])
    assert cfg.sigmas == (0.0, 1.5, 2.0) and isinstance(cfg.sigmas, tuple)
    assert cfg.hops == [1, 3] and isinstance(cfg.hops, list)
    assert cfg.modes == ("slow", "fast")


def test_optional_and_bool():
    assert parse_config(Config, ["--checkpoint", "none"]).checkpoint is None
    assert parse_config(Config, ["--checkpoint", "None"]).checkpoint is None
    assert parse_config(Config, ["--checkpoint", "runs/ae"]).checkpoint == "runs/ae"
    assert parse_config(Config, ["--budget", "none"]).budget is None
    assert parse_config(Config, ["--budget", "8"]).budget == 8
    assert parse_config(Config, ["--no-plots"]).plots is False
    assert parse_config(Config, ["--no-plots", "--plots"]).plots is True


def test_literal_choices_and_optional_literal(capsys):
    assert parse_config(Config, ["--mode", "slow"]).mode == "slow"
    code, _, err = _exit(capsys, lambda: parse_config(Config, ["--mode", "medium"], prog="prog"))
    assert code == 2 and "invalid choice: 'medium'" in err
    code, _, err = _exit(capsys, lambda: parse_config(Config, ["--modes", "fast", "medium"], prog="prog"))
    assert code == 2 and "--modes" in err

    @dataclass
    class Opt:
        kind: Mode | None = None

    assert parse_config(Opt, ["--kind", "none"]).kind is None
    assert parse_config(Opt, ["--kind", "slow"]).kind == "slow"
    assert "{fast,slow,none}" in build_parser(Opt).format_help()


@pytest.mark.parametrize("argv, needle", [
    (["--bogus", "1"], "unrecognized arguments: --bogus 1"),
    (["--steps", "x"], "argument --steps: invalid int value: 'x'"),
    (["--lr", "fast"], "argument --lr: invalid float value: 'fast'"),
    (["--sigmas", "0", "y"], "argument --sigmas: invalid float value: 'y'"),
    (["--budget", "1.5"], "argument --budget: invalid int value: '1.5'"),
    (["--lr", "-1"], "Config.lr must be > 0, got -1.0"),  # the dataclass's own check
    (["--sigmas"], "expected at least one argument"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    code, out, err = _exit(capsys, lambda: parse_config(Config, argv, prog="python -m study"))
    assert code == 2 and out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m study: error: ") and needle in last
    assert not any(line.startswith("Traceback") for line in err.splitlines())


def test_field_docs_from_docstrings_and_bases():
    docs = field_docs(Config)
    assert docs["lr"] == "learning rate"
    assert docs["name"] == "run name; 10% of it is wrapped over two lines"  # inherited, whitespace collapsed
    assert docs["seed"] == "a redefined field: this doc wins"
    assert "steps" not in docs


def test_help_text_from_field_docs(capsys):
    code, out, _ = _exit(capsys, lambda: parse_config(Config, ["--help"], prog="python -m study",
                                                      description="A study."))
    assert code == 0
    text = " ".join(out.split())
    assert "A study." in text
    assert "--lr FLOAT learning rate (default: 0.1)" in text
    assert "10% of it is wrapped over two lines" in text  # "%" escaped for argparse
    assert "--plots, --no-plots write PNG plots" in text
    assert "--mode {fast,slow} how to run" in text
    assert "--sigmas FLOAT [FLOAT ...] noise standard deviations" in text
    assert "--steps INT steps" in text  # no doc: the field name


def test_required_field_and_unsupported_type(capsys):
    assert parse_config(Required, ["--size", "3"]) == Required(size=3)
    code, _, err = _exit(capsys, lambda: parse_config(Required, [], prog="p"))
    assert code == 2 and "required: --size" in err

    @dataclass
    class Bad:
        table: dict = field(default_factory=dict)

    with pytest.raises(TypeError, match="'table'"):
        build_parser(Bad)
    parser = argparse.ArgumentParser()
    add_dataclass_args(parser, Bad, skip=("table",))  # skipped fields need no command-line type
    assert vars(parser.parse_args([])) == {}


def test_overrides_mode_keeps_only_given_flags():
    parser = argparse.ArgumentParser(prog="p")
    add_dataclass_args(parser, Config, skip=("name",), overrides=True)
    assert given_values(parser.parse_args([]), Config) == {}
    ns = parser.parse_args(["--lr", "0.5", "--checkpoint", "none", "--no-plots", "--sigmas", "1", "2"])
    assert given_values(ns, Config) == {"lr": 0.5, "checkpoint": None, "plots": False, "sigmas": (1.0, 2.0)}
    with pytest.raises(SystemExit):
        parser.parse_args(["--name", "x"])  # skipped: no flag
    help_text = parser.format_help()
    assert "default" not in help_text and "learning rate" in help_text


def test_calm_train_parser_uses_it(capsys):
    from calm import train
    from calm.autoencoder import AutoencoderConfig

    parser = train.build_parser()
    args = parser.parse_args(["baseline", "--out", "r", "--tie-embeddings", "--steps", "5", "--num-heads", "2"])
    model_cfg, train_cfg = train.configs_from_args(args, train.TASKS["baseline"], vocab_size=64, pad_id=0)
    assert model_cfg.tie_embeddings is True and model_cfg.num_heads == 2 and train_cfg.steps == 5
    args = parser.parse_args(["baseline", "--out", "r"])  # nothing given: the preset's values
    model_cfg, train_cfg = train.configs_from_args(args, train.TASKS["baseline"], vocab_size=64, pad_id=0)
    preset_train = train.TASKS["baseline"].train_presets["tiny"]
    assert train_cfg.steps == preset_train.get("steps", train_cfg.steps)
    args = parser.parse_args(["autoencoder", "--out", "r", "--K", "2", "--latent-dim", "16"])
    model_cfg, _ = train.configs_from_args(args, train.TASKS["autoencoder"], vocab_size=64, pad_id=0)
    assert isinstance(model_cfg, AutoencoderConfig) and (model_cfg.K, model_cfg.latent_dim) == (2, 16)
    for argv in (["autoencoder", "--out", "r", "--vocab-size", "9"], ["calm", "--out", "r", "--ae", "x", "--K", "2"],
                 ["autoencoder", "--out", "r", "--steps", "1.5"]):
        code, _, err = _exit(capsys, lambda argv=argv: parser.parse_args(argv))
        assert code == 2 and len([ln for ln in err.splitlines() if "error:" in ln]) == 1
    for name in train.TASKS:  # every subcommand's help builds
        code, out, _ = _exit(capsys, lambda name=name: parser.parse_args([name, "--help"]))
        assert code == 0 and "--steps INT" in out
