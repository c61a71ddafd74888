"""calm.tracking and the run directory's report tools: settings refused before anything starts, the local MLflow
store offline, resumed runs, headline metrics, ``report.html`` rebuilt from a run directory, ``experiments.compare``.

The sweep itself, tracked and reported end to end (Ray, a real browser): tests/test_tracking_sweep.py.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from calm.tracking import check_tracking, flatten_params, open_tracker
from experiments.common.html_report import write_html_report, write_report_extras
from experiments.common.run_tracking import close_tracking, start_run_tracking

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("tracking, uri, message", [
    ("tensorboard", "", "tracking must be one of mlflow, wandb, none"),
    ("mlflow", "ftp://host/store", "not a store MLflow knows"),
    ("mlflow", "file:///tmp/mlruns", "MLflow 3 no longer writes file stores"),
    ("none", "sqlite:///x.db", "given with --tracking none"),
])
def test_bad_tracking_settings_are_refused(tracking, uri, message):
    with pytest.raises(ValueError, match=message):
        check_tracking(tracking, uri)


def test_wandb_without_its_package_names_the_extra():
    pytest.importorskip("mlflow")
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match=r"pip install 'latentcomm\[wandb\]'"):
            check_tracking("wandb", "")
    else:
        check_tracking("wandb", "")  # installed: accepted


def test_a_bad_tracking_uri_is_one_line_and_exit_2_before_anything_starts(tmp_path):
    result = subprocess.run([sys.executable, "-m", "experiments.referential_game", "--results-dir", str(tmp_path),
                             "--tracking", "mlflow", "--tracking-uri", "ftp://nowhere/x"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "error: --tracking-uri 'ftp://nowhere/x': not a store MLflow knows" in lines[0]
    assert not list(tmp_path.iterdir())  # no run directory, no store


def test_the_local_store_works_with_the_network_cut(tmp_path):
    """Every socket but Unix ones refused in a fresh interpreter (before MLflow is imported): the default store
    takes a run with parameters, a curve, a child and artifacts, and nothing tried to connect anywhere."""
    script = textwrap.dedent(f"""
        import json, socket
        attempts = []
        real_connect = socket.socket.connect
        def connect(self, address):
            if self.family == socket.AF_UNIX:
                return real_connect(self, address)
            attempts.append(repr(address))
            raise OSError("network cut by the test")
        def getaddrinfo(*args, **kwargs):
            attempts.append(repr(args[:2]))
            raise OSError("network cut by the test")
        socket.socket.connect = connect
        socket.socket.connect_ex = connect
        socket.getaddrinfo = getaddrinfo
        from pathlib import Path
        from calm.tracking import open_tracker
        root = Path({str(tmp_path)!r})
        t = open_tracker("mlflow", "", root, experiment="offline", run_name="r", params={{"a": 1, "b": {{"c": "x"}}}},
                         tags={{"corpus": "kjv"}})
        t.log_history([{{"step": 1, "train_loss": 2.0, "train_xy": 1.5}}, {{"step": 2, "train_loss": 1.0,
                         "train_xy": 0.75}}])
        child = t.child("trial-0", params={{"sigma": 0.5}}, key="trial:0")
        child.log_metrics({{"success": 0.9, "protocol": "vector", "nan": float("nan")}})
        child.finish()
        (root / "f.txt").write_text("hi")
        t.log_artifacts(root, skip=("mlflow.db",))
        t.finish()
        print(json.dumps({{"run_id": t.run_id, "attempts": attempts}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["attempts"] == []
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(result["run_id"])
    assert run.info.status == "FINISHED" and run.data.params == {"a": "1", "b.c": "x"}
    assert run.data.tags["corpus"] == "kjv" and run.data.tags["git_commit"]
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train_xy")] == [(1, 1.5), (2, 0.75)]
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == 1 and children[0].data.metrics == {"success": 0.9}  # text and NaN are not metrics
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["f.txt"]
    assert (tmp_path / "mlartifacts" / "offline").is_dir()  # artifacts under the results directory, not the cwd


def test_a_resumed_run_logs_into_the_same_run_and_keeps_changed_settings(tmp_path):
    first = open_tracker("mlflow", "", tmp_path, experiment="e", run_name="r", params={"steps": 4})
    first.child("a", key="trial:a").finish()
    first.finish("KILLED")
    again = open_tracker("mlflow", "", tmp_path, experiment="e", run_name="r", params={"steps": 6, "lr": 0.1},
                         resume_id=first.run_id)
    assert again.run_id == first.run_id and again.children() == {"trial:a"}
    run = again.client.get_run(again.run_id)
    assert run.info.status == "RUNNING"
    assert run.data.params == {"steps": "4", "lr": "0.1"} and run.data.tags["changed.steps"] == "6"
    # a run the store does not hold (another store) starts a new one
    other = open_tracker("mlflow", "", tmp_path / "elsewhere", experiment="e", run_name="r", resume_id=first.run_id)
    assert other.run_id != first.run_id


def test_flatten_params_nests_and_joins():
    assert flatten_params({"a": {"b": 1, "c": (1, 2)}, "d": None}) == {"a.b": "1", "a.c": "1,2", "d": "None"}


# ---------------------------------------------------------------------------------------------------------
# a run directory, written as the engine writes one (no Ray): the report, the tracked run, compare


def _run_dir(tmp_path: Path, name: str, *, sigma_scale: float = 1.0, plots: bool = True) -> Path:
    """A finished referential-style run directory with rows, summary.md, a plot and the study's extras."""
    import matplotlib

    matplotlib.use("Agg")
    from dataclasses import dataclass

    import matplotlib.pyplot as plt

    run = tmp_path / name
    (run / "rows").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"experiment": "referential", "settings_hash": "abc", "finished": True}))

    @dataclass
    class Cfg:
        results_dir: str = str(tmp_path)
        tracking: str = "mlflow"
        tracking_uri: str = ""
        corpus: str = "kjv"
        tokenizer: str = "bpe:8192"
        episodes: int = 64 if sigma_scale == 1.0 else 128

    cfg = Cfg()
    (run / "config.json").write_text(json.dumps({"config": cfg.__dict__, "git_commit": "deadbeef", "checkpoint_id":
                                                 "ae@123", "question": "Does the vector beat a random code?",
                                                 "rerun": f"python -m experiments.referential_game --run-name {name}"}))
    rows = []
    for i, (protocol, success) in enumerate([("vector", 0.8), ("hash", 0.9)]):
        row = {"protocol": protocol, "sigma": 1.0, "success": success * sigma_scale, "episodes": 64}
        (run / "rows" / f"t{i}.json").write_text(json.dumps(row))
        rows.append(row)
    pd.DataFrame(rows).to_csv(run / "results.csv", index=False)
    (run / "summary.md").write_text("# Referential game: " + name + "\n\nEs/N0 convention.\n\nsuccess\n"
                                    "| protocol | 0.0 |\n|---|---:|\n| vector | 0.800 |\n| *bound* | 1.000 |\n")
    if plots:
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], [0, 1])
        fig.savefig(run / "success_vs_snr.png")
        plt.close(fig)
    write_report_extras(run, headline=pd.DataFrame({"protocol": ["vector", "hash"], "n": [32, 32],
                                                    "success": [0.8 * sigma_scale, 0.9 * sigma_scale],
                                                    "95% low": [0.7, 0.8], "95% high": [0.9, 0.95]}),
                        examples=pd.DataFrame({"protocol@n": ["vector@32"], "Es/N0 (dB)": ["0.0"],
                                               "text out": ["<b>and God said</b>"], "token accuracy": [0.5]}),
                        bounds=["*simplex line*: the best code for C messages"], headline_note="pooled over seeds",
                        sections=[("Leak check", "None: every point within capacity.")])
    start_run_tracking(cfg, run, name, "referential", checkpoint_id="ae@123", settings_hash="abc")
    return run


def test_report_html_is_self_contained_and_rebuilt_by_the_cli(tmp_path):
    run = _run_dir(tmp_path, "run-a")
    page = write_html_report(run).read_text()
    assert "Does the vector beat a random code?" in page
    assert page.count('<img class="plot" src="data:image/png;base64,') == 1
    assert '<table class="dataframe headline">' in page and "0.95" in page
    assert "&lt;b&gt;and God said&lt;/b&gt;" in page  # decoded text is escaped, never markup
    assert "<em>simplex line</em>" in page and "Leak check" in page
    assert "python -m experiments.referential_game --run-name run-a" in page
    assert "mlflow ui --backend-store-uri sqlite:///" in page
    for remote in ("http://", "https://", "src=\"//"):  # no network: every part is inside the page
        assert remote not in page.replace("http://host:5000", "")
    (run / "report.html").unlink()
    result = subprocess.run([sys.executable, "-m", "experiments.report", str(run)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and (run / "report.html").is_file()


def test_report_falls_back_to_the_first_summary_table_and_names_damage(tmp_path):
    run = _run_dir(tmp_path, "run-b", plots=False)
    (run / "headline.csv").unlink()
    page = write_html_report(run).read_text()
    assert '<table class="headline">' in page and "(the first table of summary.md)" in page
    (run / "config.json").write_text("{not json")
    result = subprocess.run([sys.executable, "-m", "experiments.report", str(run), str(tmp_path / "nothing")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "config.json" in result.stderr and "nothing is not a run directory" in result.stderr


def test_closing_a_run_logs_rows_headline_and_files(tmp_path):
    run = _run_dir(tmp_path, "run-c")
    write_html_report(run)
    close_tracking(run, "FINISHED", grid=[{"key": "t0", "protocol": "vector"}, {"key": "t1", "protocol": "hash"}])
    from mlflow.tracking import MlflowClient

    record = json.loads((run / "tracking.json").read_text())
    client = MlflowClient(record["uri"])
    parent = client.get_run(record["run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["vector/32/success"] == pytest.approx(0.8)
    assert parent.data.metrics["hash/32/95_ high"] == pytest.approx(0.95)
    assert {"report.html", "summary.md", "results.csv", "headline.csv", "success_vs_snr.png", "config.json"} <= {
        a.path for a in client.list_artifacts(record["run_id"])}
    kids = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{record['run_id']}'")
    by_key = {k.data.tags["child_key"]: k for k in kids}
    assert set(by_key) == {"trial:t0", "trial:t1"}
    assert by_key["trial:t0"].data.params == {"protocol": "vector"}
    assert by_key["trial:t1"].data.metrics["success"] == pytest.approx(0.9)
    close_tracking(run, "FINISHED")  # again (--overwrite): no trial twice
    assert len(client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{record['run_id']}'")) == 2


def test_compare_lays_runs_side_by_side_with_the_settings_that_differ(tmp_path):
    a, b = _run_dir(tmp_path, "run-a"), _run_dir(tmp_path, "run-b", sigma_scale=0.5)
    out = tmp_path / "compare.html"
    result = subprocess.run([sys.executable, "-m", "experiments.compare", str(a), str(b), "--html", str(out), "--csv",
                             str(tmp_path / "c.csv")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "c.csv")
    line = table[(table.row == "vector / 32") & (table.metric == "success")].iloc[0]
    assert line["run-a"] == pytest.approx(0.8) and line["run-b"] == pytest.approx(0.4)
    assert "| episodes | 64 | 128 |" in result.stdout
    assert "<h2>Settings that differ</h2>" in out.read_text()
    bad = subprocess.run([sys.executable, "-m", "experiments.compare", str(a), str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "is not a run directory" in bad.stderr


def test_an_mlflow_server_is_reached_when_named_and_refused_when_silent(tmp_path):
    """The one test that starts a server (nothing else does): a run logged through --tracking-uri http://... lands
    in the server's store; a URI where no server answers is refused before anything starts."""
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
                               str(tmp_path / "server-artifacts"), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "the MLflow server did not start"
                time.sleep(0.5)
        check_tracking("mlflow", uri)
        tracker = open_tracker("mlflow", uri, tmp_path / "results", experiment="served", run_name="r",
                               params={"sigma": 0.5})
        tracker.log_metrics({"success": 0.75}, step=3)
        tracker.finish()
        from mlflow.tracking import MlflowClient

        run = MlflowClient(f"sqlite:///{tmp_path}/server.db").get_run(tracker.run_id)  # the server's own store
        assert run.data.params == {"sigma": "0.5"} and run.data.metrics == {"success": 0.75}
        assert not (tmp_path / "results" / "mlflow.db").exists()  # nothing in the local store
    finally:
        server.terminate()
        server.wait(timeout=30)
    with pytest.raises(ValueError, match="no MLflow server answers there"):
        check_tracking("mlflow", uri)


def test_wandb_offline_takes_the_same_calls(tmp_path, monkeypatch):
    """--tracking wandb (the optional extra; in the dev extra so CI runs this) in W&B's offline mode: the run's
    settings, curve, a trial and the files land in the local offline run, and it finishes cleanly."""
    pytest.importorskip("wandb", reason="pip install 'latentcomm[wandb]'")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = open_tracker("wandb", "", tmp_path, experiment="latentcomm-test", run_name="r",
                           params={"sigma": {"low": 0.25}}, tags={"corpus": "kjv"})
    tracker.log_history([{"step": 1, "train_xy": 2.0}, {"step": 2, "train_xy": 1.0}])
    tracker.child("trial-0", params={"protocol": "vector"}, metrics={"success": 0.9}, finished=True)
    (tmp_path / "summary.md").write_text("# run\n")
    tracker.log_artifacts(tmp_path)
    tracker.finish()
    [log] = list((tmp_path / "wandb").glob("offline-run-*/*.wandb"))
    data = log.read_bytes()
    for name in (b"train_xy", b"trial-0/success", b"trial-0/protocol", b"sigma.low", b"tag.corpus", b"summary.md"):
        assert name in data, name
    assert "exitcode: 0" in (tmp_path / "wandb" / "debug.log").read_text()
