"""Hostile inputs to the studies outside the grid engine (steering, compare_sae, analyze_vectors, calm_scaling,
scaling_k): every setting error is one line with exit status 2, in under 5 seconds, before Ray or a model starts;
duplicate grid values are merged with a note; a run directory is owned by one experiment and its settings, and a
finished run is never overwritten without --overwrite.

The grid studies are in ``test_hostile_inputs.py``, the loaders in ``test_hostile_loaders.py``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from calm.files import read_json
from experiments.common.config import settings_hash
from experiments.common.sweep import claim_single_run, cli, mark_finished, open_run_dir

ROOT = Path(__file__).resolve().parents[1]
NO_GPU = not torch.cuda.is_available()
needs_no_gpu = pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA GPU: --device cuda is fine here")

# (study, argv, what the one error line must say)
SETTING_ERRORS = [
    ("steering", ["--alphas", "0", "nan"], "--alphas must be finite, got nan"),
    ("steering", ["--alphas", "0", "inf"], "--alphas must be finite, got inf"),
    ("steering", ["--alphas", "0", "1e300"], "--alphas must lie in [0, 1e+06]"),
    ("steering", ["--alphas", "0", "-1"], "--alphas must lie in [0, 1e+06]"),
    ("steering", ["--alphas", "1", "2"], "--alphas must start with 0"),
    ("steering", ["--alphas", "0", "4", "2"], "--alphas must increase from 0"),
    ("steering", ["--example-alphas", "7"], "--example-alphas 7: not among --alphas 0 1 2 4 8 16"),
    ("steering", ["--alphas", "0", "4", "--example-alphas", "4", "16"], "--example-alphas 16: not among --alphas 0 4"),
    ("steering", ["--prompts", "0"], "--prompts must be an integer >= 1"),
    ("steering", ["--layer", "-1"], "--layer must be an integer >= 0"),
    ("steering", ["--seed", "-1"], "--seed must be an integer >= 0"),
    ("steering", ["--run-name", ".."], "run_name must be a plain directory name"),
    ("compare_sae", ["--lr", "inf"], "--lr must be finite, got inf"),
    ("compare_sae", ["--lr", "nan"], "--lr must be finite, got nan"),
    ("compare_sae", ["--lr", "0"], "--lr must lie in (0, 1]"),
    ("compare_sae", ["--lr", "5"], "--lr must lie in (0, 1]"),
    ("compare_sae", ["--ks", "0"], "--ks must be an integer >= 1"),
    ("compare_sae", ["--expansions", "0"], "--expansions must be an integer >= 1"),
    ("compare_sae", ["--threshold", "1"], "--threshold must lie in (0, 1)"),
    ("compare_sae", ["--min-share", "0"], "--min-share must lie in (0, 1]"),
    ("compare_sae", ["--min-lift", "nan"], "--min-lift must be finite"),
    ("compare_sae", ["--window", "1"], "--window must be an integer >= 2"),
    ("analyze_vectors", ["--k", "3"], "--k 3: experiments.scaling_k has autoencoders at the K dividing 16"),
    ("analyze_vectors", ["--noise-sigmas", "nan"], "--noise-sigmas must be finite"),
    ("analyze_vectors", ["--noise-sigmas", "-1"], "--noise-sigmas must lie in [0, 10000]"),
    ("analyze_vectors", ["--probe-cs", "inf"], "--probe-cs must be finite"),
    ("analyze_vectors", ["--probe-cs", "0"], "--probe-cs must lie in (0, 1e+06]"),
    ("analyze_vectors", ["--test-fraction", "nan"], "--test-fraction must be finite"),
    ("analyze_vectors", ["--max-chunks", "5"], "--max-chunks must be an integer >= 100"),
    ("analyze_vectors", ["--umap-points", "3"], "--umap-points must be an integer >= 16"),
    ("calm_scaling", ["--budgets", "1e300"], "more than 100,000 (the default budgets"),
    ("calm_scaling", ["--budgets", "1e12", "1e17"], "--budgets 1e+17: the"),
    ("calm_scaling", ["--budgets", "1e12", "1.0001e12"], "name one grid point (C1e+12"),
    ("calm_scaling", ["--lr", "3"], "--lr must lie in (0, 1]"),
    ("calm_scaling", ["--seed", "-2"], "--seed must be an integer >= 0"),
    ("scaling_k", ["--budgets", "1e300"], "more than 100,000 (the default budgets"),
    ("scaling_k", ["--budgets", "1e12", "1.0001e12"], "name one grid point (C1e+12"),
    ("scaling_k", ["--noise-sigmas", "-1"], "--noise-sigmas must lie in [0, 10000]"),
    ("scaling_k", ["--seed", "-1"], "--seed must be an integer >= 0"),
    ("scaling_k", ["--num-candidates", "5000"], "--num-candidates 5000 is more than --num-passages 2000"),
    ("scaling_k", ["--generate-tokens", "500"], "--generate-tokens 500"),
]
DEVICE_ERRORS = [
    ("calm_scaling", ["--device", "cuda"], "--device cuda: this machine has no CUDA GPU; use --device cpu"),
    ("scaling_k", ["--device", "cuda"], "--device cuda: this machine has no CUDA GPU; use --device cpu"),
]


def _run_cli(monkeypatch, capsys, study: str, argv: list[str]) -> tuple[int, str, str, float]:
    """The study's command line in this process, timed, with Ray made to fail if anything starts it."""
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the settings were checked")

    monkeypatch.setattr(ray, "init", no_ray)
    module = importlib.import_module(f"experiments.{study}")
    monkeypatch.setattr(sys, "argv", [f"python -m experiments.{study}", *argv])
    t0 = time.monotonic()
    try:
        code = cli(module.main, module.Config, prog=f"python -m experiments.{study}", description="")
    except SystemExit as exc:
        code = exc.code
    seconds = time.monotonic() - t0
    out, err = capsys.readouterr()
    return code, out, err, seconds


def _one_error(study: str, code: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if not line.startswith("note: ")]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith(f"python -m experiments.{study}: error: "), err
    return lines[0]


@pytest.mark.parametrize("study, argv, needle", [*SETTING_ERRORS, *[pytest.param(*e, marks=needs_no_gpu)
                                                                     for e in DEVICE_ERRORS]],
                         ids=[f"{s} {' '.join(a)}" for s, a, _ in SETTING_ERRORS + DEVICE_ERRORS])
def test_setting_error_is_one_line_exit_2_without_ray(monkeypatch, capsys, tmp_path, study, argv, needle):
    code, out, err, seconds = _run_cli(monkeypatch, capsys, study, [*argv, "--results-dir", str(tmp_path / "results"),
                                                                    "--runs-dir", str(tmp_path / "runs")])
    assert len(err.strip().splitlines()) == 1, err  # no note either: nothing here repeats a value
    assert needle in _one_error(study, code, err)
    assert seconds < 5.0, f"{study} took {seconds:.1f} s to refuse {argv}"
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()  # nothing trained or written


@pytest.mark.parametrize("study, argv", [  # the heaviest imports; every setting error is also checked in-process above
    ("steering", ["--alphas", "0", "nan"]),
    ("calm_scaling", ["--budgets", "1e300"]),
])
def test_setting_error_takes_under_5_seconds_as_a_command(tmp_path, study, argv):
    """Measured as a user meets it: a fresh interpreter, imports included. The bound is on the command's CPU seconds
    (the wall clock of a 2-core machine running the rest of the suite beside it measures the load)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", f"experiments.{study}", *argv, "--results-dir", str(tmp_path / "r"),
                           "--runs-dir", str(tmp_path / "runs")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "RAY_ADDRESS": "127.0.0.1:1"})  # a Ray start would fail
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert cpu < 5.0, f"{study} took {cpu:.1f} CPU seconds ({wall:.1f} s wall) to refuse {argv}"
    assert wall < 30.0
    assert not any(tmp_path.iterdir())


def test_a_large_budget_passes_with_force():
    from experiments.calm_scaling import Config
    from experiments.common.lm_budget import MAX_STEPS

    assert Config(budgets=(1e300,), force=True).budgets == (1e300,)
    assert Config(budgets=(6.25e12,)).budgets == (6.25e12,)  # the default budgets are far from the limit
    assert MAX_STEPS == 100_000


# ---------------------------------------------------------------------------------------------------------
# duplicate grid values


@pytest.mark.parametrize("study, given, merged", [
    ("steering", dict(alphas=(0.0, 1.0, 1.0, 4.0), attributes=("source", "source")),
     dict(alphas=(0.0, 1.0, 4.0), attributes=("source",))),
    ("steering", dict(methods=("codec-mean", "codec-mean"), example_alphas=(4.0, 4.0)),
     dict(methods=("codec-mean",), example_alphas=(4.0,))),
    ("compare_sae", dict(ks=(2, 2, 4), expansions=(4, 4), sources=("latent", "latent")),
     dict(ks=(2, 4), expansions=(4,), sources=("latent",))),
    ("analyze_vectors", dict(noise_sigmas=(0.3, 0.3), probe_cs=(0.1, 0.1, 1.0)),
     dict(noise_sigmas=(0.3,), probe_cs=(0.1, 1.0))),
])
def test_duplicate_grid_values_are_merged_with_a_note(capsys, study, given, merged):
    Config = importlib.import_module(f"experiments.{study}").Config
    capsys.readouterr()
    cfg = Config(**given)
    err = capsys.readouterr().err
    for name, value in merged.items():
        assert getattr(cfg, name) == value
        if len(given[name]) != len(value):
            assert f"--{name.replace('_', '-')} " in err and "repeated values merged" in err, err
    assert settings_hash(cfg) == settings_hash(Config(**merged))


def test_default_example_alphas_are_three_of_the_alphas():
    from experiments.steering import Config

    assert Config().shown_alphas() == (1.0, 4.0, 16.0)  # what the default used to show
    assert Config(alphas=(0.0, 4.0)).shown_alphas() == (4.0,)  # the default no longer names an alpha not steered
    assert Config(alphas=(0.0, 2.0, 3.0), example_alphas=(3.0,)).shown_alphas() == (3.0,)


# ---------------------------------------------------------------------------------------------------------
# settings that need the models: checked after loading them, before any run directory or work


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Randomly initialised tiny K = 2 autoencoder, CALM (2 blocks) and token baseline (2 blocks), saved."""
    from calm.autoencoder import Autoencoder, preset
    from calm.baseline import TokenTransformer
    from calm.baseline import preset as token_preset
    from calm.checkpoint import save_pretrained
    from calm.energy_transformer import EnergyTransformer
    from calm.energy_transformer import preset as calm_preset
    from calm.tokenizer import get_tokenizer

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-hostile")
    tok = get_tokenizer("bpe:8192")
    ae = Autoencoder(preset("tiny-k2", vocab_size=len(tok), hidden_size=32, intermediate_size=64, latent_dim=8)).eval()
    lm = EnergyTransformer(calm_preset("tiny", ae.config, hidden_size=32, num_layers=2, num_heads=2,
                                       intermediate_size=64, head_intermediate_size=32, max_patches=32),
                           autoencoder=ae).eval()
    tm = TokenTransformer(token_preset("tiny", vocab_size=len(tok), hidden_size=32, num_layers=2, num_heads=2,
                                       intermediate_size=64, max_positions=64)).eval()
    for name, model in (("ae", ae), ("lm", lm), ("tm", tm)):
        save_pretrained(model, root / name, tok)
    return root


def _models(tiny: Path, study: str) -> list[str]:
    args = ["--checkpoint", str(tiny / "ae")]
    if study in ("steering", "compare_sae"):
        args += ["--lm-checkpoint", str(tiny / "lm")]
    if study == "steering":
        args += ["--token-lm-checkpoint", str(tiny / "tm"), "--tokens", "8"]
    return args


@pytest.mark.parametrize("study, argv, needle", [
    ("compare_sae", ["--ks", "100000"], "--ks 100000: the latent SAE of expansion 4 has 32 features (d_in 8)"),
    ("compare_sae", ["--ks", "2", "200", "--sources", "hidden"], "--ks 200: the hidden SAE of expansion 4 has 128"),
    ("steering", ["--layer", "5"], "--layer 5: lm has 2 blocks (--layer 0 to 1)"),
    ("steering", ["--layer", "2", "--methods", "token-actadd"], "--layer 2: tm has 2 blocks"),
])
def test_settings_beyond_the_models_are_refused_before_any_work(monkeypatch, capsys, tmp_path, tiny, study, argv,
                                                                 needle):
    """``--ks 100000`` trained no SAE and wrote an empty table; a layer past the blocks failed minutes in."""
    code, out, err, seconds = _run_cli(monkeypatch, capsys, study,
                                       [*_models(tiny, study), *argv, "--results-dir", str(tmp_path / "results")])
    assert needle in _one_error(study, code, err)
    assert seconds < 5.0 and not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------------------------
# run directories: owned by one experiment and its settings; a finished run is kept unless --overwrite

CLAIMS = {"steering": "steering", "analyze_vectors": "vectors", "compare_sae": "sae"}


def _claim(study: str, tiny: Path, results: Path, run_name: str, **settings) -> Path:
    """The run directory as the study's main claims it, with the checkpoint ids it names."""
    from experiments.common.models import checkpoint_id

    module = importlib.import_module(f"experiments.{study}")
    names = {"steering": ("ae", "lm", "tm"), "compare_sae": ("ae", "lm"), "analyze_vectors": ("ae",)}[study]
    extra = {"tokens": 8} if study == "steering" else {}
    cfg = module.Config(results_dir=str(results), **{**extra, **settings})
    ids = " + ".join(checkpoint_id(tiny / n) for n in names)
    return claim_single_run(cfg, run_name, ids, experiment=CLAIMS[study])


@pytest.mark.parametrize("study", list(CLAIMS))
def test_finished_run_is_refused_without_overwrite(monkeypatch, capsys, tmp_path, tiny, study):
    """A rerun used to overwrite the earlier results in place."""
    run_dir = _claim(study, tiny, tmp_path, "done")
    assert read_json(run_dir / "run.json")["experiment"] == CLAIMS[study] and not (run_dir / "rows").exists()
    (run_dir / "summary.md").write_text("the earlier results\n")
    mark_finished(run_dir)
    code, out, err, seconds = _run_cli(monkeypatch, capsys, study, [*_models(tiny, study), "--results-dir",
                                                                    str(tmp_path), "--run-name", "done"])
    line = _one_error(study, code, err)
    assert f"{run_dir} holds a finished" in line and "--overwrite replaces it" in line
    assert (run_dir / "summary.md").read_text() == "the earlier results\n" and seconds < 5.0
    # --overwrite takes the directory back (main would then rewrite every file); the run is unfinished meanwhile
    again = _claim(study, tiny, tmp_path, "done", overwrite=True)
    assert again == run_dir and read_json(run_dir / "run.json")["finished"] is False


@pytest.mark.parametrize("study, owner", [("analyze_vectors", "steering"), ("steering", "analyze_vectors"),
                                          ("compare_sae", "steering"), ("steering", "compare_sae")])
def test_run_directory_of_another_study_is_refused_naming_both(monkeypatch, capsys, tmp_path, tiny, study, owner):
    run_dir = _claim(owner, tiny, tmp_path, "shared")
    (run_dir / "summary.md").write_text(f"# {owner}\n")
    code, out, err, _ = _run_cli(monkeypatch, capsys, study, [*_models(tiny, study), "--results-dir", str(tmp_path),
                                                              "--run-name", "shared"])
    line = _one_error(study, code, err)
    assert f"belongs to {CLAIMS[owner]} run, not this {CLAIMS[study]} run" in line
    assert (run_dir / "summary.md").read_text() == f"# {owner}\n"


@pytest.mark.parametrize("study", list(CLAIMS))
def test_grid_run_and_foreign_files_are_refused(monkeypatch, capsys, tmp_path, tiny, study):
    """A reconstruction run named like a steering run had its summary.md overwritten (only directories with a
    config.json were checked)."""
    open_run_dir(str(tmp_path), "theirs", "aaaa", None, experiment="reconstruction")
    (tmp_path / "theirs" / "summary.md").write_text("# reconstruction\n")
    (tmp_path / "loose").mkdir()
    (tmp_path / "loose" / "summary.md").write_text("# someone's notes\n")
    for name, needle in (("theirs", f"belongs to reconstruction run, not this {CLAIMS[study]} run"),
                         ("loose", f"holds files of no {CLAIMS[study]} run")):
        code, out, err, _ = _run_cli(monkeypatch, capsys, study, [*_models(tiny, study), "--results-dir",
                                                                  str(tmp_path), "--run-name", name])
        assert needle in _one_error(study, code, err)
    assert (tmp_path / "theirs" / "summary.md").read_text() == "# reconstruction\n"
    assert (tmp_path / "loose" / "summary.md").read_text() == "# someone's notes\n"


def test_run_directory_of_other_settings_is_refused(monkeypatch, capsys, tmp_path, tiny):
    _claim("steering", tiny, tmp_path, "s", prompts=6)
    code, out, err, _ = _run_cli(monkeypatch, capsys, "steering", [*_models(tiny, "steering"), "--results-dir",
                                                                   str(tmp_path), "--run-name", "s"])
    assert "holds a steering run with different settings" in _one_error("steering", code, err)


def test_where_things_go_does_not_change_the_settings():
    from experiments.analyze_vectors import Config as Vectors
    from experiments.compare_sae import Config as Sae
    from experiments.steering import Config as Steering

    for Config in (Steering, Vectors, Sae):
        assert settings_hash(Config()) == settings_hash(Config(results_dir="x", runs_dir="y", run_name="z",
                                                               plots=False, overwrite=True, checkpoint="ae"))
        assert settings_hash(Config()) != settings_hash(Config(seed=1))


# ---------------------------------------------------------------------------------------------------------
# scaling_k: run.json of its own, a finished run kept unless --overwrite (as run_sweep does)


def _k_config(tmp_path: Path, **kw):
    from experiments.scaling_k import Config

    return Config(results_dir=str(tmp_path), runs_dir=str(tmp_path / "runs"), run_name="k", ks=(2,),
                  budgets=(2e10,), address="local", num_cpus=1, **kw)


def test_scaling_k_finished_run_keeps_its_reports_without_ray(monkeypatch, tmp_path):
    """scaling_k called open_run_dir without its experiment (a TypeError) and rewrote a finished run's reports."""
    import ray

    from experiments.scaling_k import ae_grid, lm_grid, main

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("Ray started for a finished run"))
    cfg = _k_config(tmp_path)
    run_dir = open_run_dir(str(tmp_path), "k", settings_hash(cfg), None, experiment="scaling-k")
    for spec in ae_grid(cfg) + lm_grid(cfg):
        (run_dir / "rows" / f"{spec['key']}.json").write_text(json.dumps({"K": 2}) + "\n")
    (run_dir / "summary.md").write_text("edited by a person\n")
    mark_finished(run_dir)
    result = main(cfg)
    assert result.rows == result.total == 4 and result.ran == []
    assert (run_dir / "summary.md").read_text() == "edited by a person\n"
    assert read_json(run_dir / "run.json")["experiment"] == "scaling-k"


def test_scaling_k_refuses_a_directory_of_another_experiment(tmp_path):
    from experiments.scaling_k import main

    open_run_dir(str(tmp_path), "k", "aaaa", None, experiment="calm-scaling")
    with pytest.raises(ValueError, match="belongs to calm-scaling run, not this scaling-k run"):
        main(_k_config(tmp_path))


@pytest.mark.slow
def test_a_real_comparison_is_marked_finished_then_kept_unless_overwrite(tmp_path, tiny):
    """The whole of compare_sae's main on the tiny models: every file written whole, run.json finished; a rerun
    is refused and leaves the files as they are; --overwrite writes them again."""
    from experiments.compare_sae import Config, main

    small = dict(checkpoint=str(tiny / "ae"), lm_checkpoint=str(tiny / "lm"), results_dir=str(tmp_path),
                 run_name="s", train_chunks=300, test_chunks=200, window=8, expansions=(2,), ks=(2,), steps=10,
                 max_classes=8, top_n=5, control=False, plots=False, tracking="mlflow")
    main(Config(**small))
    run_dir = tmp_path / "s"
    record = read_json(run_dir / "run.json")
    assert record["experiment"] == "sae" and record["finished"] is True and "ae@" in record["checkpoint_id"]
    assert read_json(run_dir / "config.json")["settings_hash"] == record["settings_hash"]
    assert {p.name for p in run_dir.iterdir()} == {"run.json", "config.json", "sae.csv", "analysis.json",
                                                   "summary.md", "saes", "report.html", "tracking.json"}  # no tmp file
    # a single-job study is tracked too: its MLflow run finished with its files, report.html among them
    from mlflow.tracking import MlflowClient

    tracked = read_json(run_dir / "tracking.json")
    client = MlflowClient(tracked["uri"])
    assert client.get_run(tracked["run_id"]).info.status == "FINISHED"
    assert {"report.html", "summary.md", "sae.csv"} <= {a.path for a in client.list_artifacts(tracked["run_id"])}
    files = sorted(p for p in run_dir.rglob("*") if p.is_file())
    before = {p: p.read_bytes() for p in files}
    written = {p: p.stat().st_mtime_ns for p in files if p.name != "run.json"}  # open_run_dir rewrites it, the same
    with pytest.raises(ValueError, match="holds a finished sae run of these settings; --overwrite"):
        main(Config(**small))
    assert sorted(p for p in run_dir.rglob("*") if p.is_file()) == files
    assert {p: p.read_bytes() for p in files} == before
    assert {p: p.stat().st_mtime_ns for p in files if p.name != "run.json"} == written
    main(Config(overwrite=True, **small))
    assert read_json(run_dir / "run.json")["finished"] is True
    assert (run_dir / "analysis.json").stat().st_mtime_ns > written[run_dir / "analysis.json"]
