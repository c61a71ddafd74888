"""A tracked sweep end to end: the referential game with ``--tracking mlflow`` writes its MLflow run (settings, tags,
one child per trial logged as its row is written, the autoencoder's training curve, the headline metrics, the run's
files) and its ``report.html``, which a real headless Chromium shows with the headline, every plot and the decoded
examples visible and no error logged. ``--overwrite`` logs into the same MLflow run again, no trial twice."""

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from browser import ensure_browser, render_page

from calm.tracking import flatten_params
from experiments.referential_game import Config, main

pytestmark = pytest.mark.ray

MICRO = dict(ae_hidden_size=32, ae_intermediate_size=64, ae_latent_dim=16, ae_steps=20, ae_batch_size=32,
             ae_time_limit=0.0)


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A 12-trial tracked sweep with plots: 3 protocols x 2 receivers x 2 sigmas."""
    cfg = Config(results_dir=str(tmp_path_factory.mktemp("results")),
                 runs_dir=str(tmp_path_factory.getbasetemp() / "latentcomm-runs-tracked"),
                 passage_length=8, channel_uses=(32,), candidates=8, sigmas=(0.0, 1.0), seeds=(0,),
                 protocols=("vector", "hash", "uncoded-tokens"), receivers=("soft", "hard"), episodes=64,
                 batch_size=64, num_passages=256, fit_passages=512, tracking="mlflow", **MICRO)
    result = main(cfg)
    assert result.rows == result.total == 12
    return cfg, result.run_dir


def _client(run_dir: Path):
    from mlflow.tracking import MlflowClient

    record = json.loads((run_dir / "tracking.json").read_text())
    return MlflowClient(record["uri"]), record["run_id"]


def test_the_sweep_is_one_mlflow_run_with_its_settings_trials_model_and_files(tracked):
    cfg, run_dir = tracked
    client, run_id = _client(run_dir)
    assert json.loads((run_dir / "tracking.json").read_text())["uri"] == f"sqlite:///{Path(cfg.results_dir).resolve()}/mlflow.db"
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == run_dir.name
    assert parent.data.params == flatten_params(asdict(cfg))
    tags = parent.data.tags
    config = json.loads((run_dir / "config.json").read_text())
    assert tags["git_commit"] == config["git_commit"] and tags["checkpoint.autoencoder"] == config["checkpoint_id"]
    assert tags["corpus"] == cfg.corpus and tags["tokenizer"] == cfg.tokenizer
    assert tags["version.torch"] == torch.__version__ and tags["version.ray"] and tags["version.sionna"]
    # headline metrics: the vector's success at the noisiest point, as headline.csv holds it
    assert 0 <= parent.data.metrics["vector/soft/awgn/32/success there"] <= 1
    files = {a.path for a in client.list_artifacts(run_id)}
    assert {"report.html", "summary.md", "results.csv", "headline.csv", "examples.csv", "config.json",
            "success_vs_snr.png", "delivered_vs_capacity.png"} <= files

    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    trials = {c.data.tags["child_key"][6:]: c for c in children if c.data.tags["child_key"].startswith("trial:")}
    rows = {p.stem: json.loads(p.read_text()) for p in (run_dir / "rows").glob("*.json")}
    assert set(trials) == set(rows)
    for key, row in rows.items():
        assert trials[key].data.metrics["success"] == pytest.approx(row["success"])
        assert trials[key].data.params["protocol"] == row["protocol"]
    # logged live, as each row was written (Tune's callback), not after the sweep wrote results.csv
    results_ms = (run_dir / "results.csv").stat().st_mtime * 1000
    assert max(c.info.end_time for c in trials.values()) <= results_ms
    models = [c for c in children if c.data.tags["child_key"].startswith("model:")]
    assert len(models) == 1 and models[0].data.tags["role"] == "autoencoder"
    curve = client.get_metric_history(models[0].info.run_id, "train_loss")
    assert [m.step for m in curve] == [20] and models[0].data.params["steps"] == "20"


def test_the_report_shows_in_a_real_browser(tracked, tmp_path):
    _, run_dir = tracked
    ensure_browser()
    plots = sorted(run_dir.glob("*.png"))
    assert len(plots) == 2
    shot = tmp_path / "report.png"
    page = render_page(run_dir / "report.html", shot,
                       selectors=["table.headline", "img.plot", "table.examples", "#question .question", "#rerun pre"])
    assert page.console_errors == [], page.console_errors
    assert page.broken_images == []
    assert page.visible["table.headline"] == 1
    assert page.matched["img.plot"] == page.visible["img.plot"] == len(plots)
    assert page.visible["table.examples"] == 1 and page.visible["#question .question"] == 1
    assert page.visible["#rerun pre"] >= 2
    assert shot.stat().st_size > 50_000 and page.page_height > 1500


def test_overwrite_logs_into_the_same_run_without_duplicating_trials(tracked):
    cfg, run_dir = tracked
    client, run_id = _client(run_dir)
    main(replace(cfg, overwrite=True))
    assert json.loads((run_dir / "tracking.json").read_text())["run_id"] == run_id
    parent = client.get_run(run_id)
    assert parent.info.status == "FINISHED"
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    keys = [c.data.tags["child_key"] for c in children]
    assert len(keys) == len(set(keys)) == 12 + 1
