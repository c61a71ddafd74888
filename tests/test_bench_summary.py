"""bench/summary.py: every benchmark's figure against its goal, from the JSON files `make bench` saves."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import summary  # noqa: E402

# the shape of each bench's JSON as its code writes it, cut down to what GOALS reads
SAMPLES: dict[str, dict] = {
    "generation_speed": {"speedup_vs_baseline": {"batch_1": 2.43, "batch_32": 2.74}},
    "ae_quality": {"bench": "ae_quality", "heldout_token_accuracy": 0.99984, "accuracy_sigma_0.3": 0.99962},
    "calm_diagnostics": {"energy": {"model": {"energy": 0.30, "xy": 1.0, "xx": 1.7},
                                    "marginal": {"energy": 0.50, "xy": 1.0, "xx": 1.5},
                                    "oracle": {"energy": 0.10, "xy": 1.0, "xx": 1.9}}},
    "calm_vs_baseline": {"calm_over_baseline_flops": None,
                         "generation_speedup": {"batch_1": 2.46, "batch_32": 2.88}},
    "channel_throughput": {"benchmark": "channel_throughput",
                           "protocols": {"uncoded-tokens": {"fraction_of_matmul_bound": None},
                                         "hash": {"fraction_of_matmul_bound": None},
                                         "vector": {"fraction_of_matmul_bound": 0.45},
                                         "quantized": {"fraction_of_matmul_bound": 0.44}}},
    "coded_ber": {"benchmark": "coded_ber", "curves": {"ldpc": {"coding_gain_db": 5.08},
                                                       "polar": {"coding_gain_db": 4.61}}},
    "harq_ir": {"benchmark": "harq_ir", "harq_gain_over_best_one_shot": {"awgn": 0.12, "tdl-a-ls": 0.2}},
    "gpu_train": {"device": "cpu", "results": [{"family": "calm-k4", "size": "m", "tokens_per_s": 9000.0},
                                               {"family": "calm-k4", "size": "S", "tokens_per_s": 800.0}]},
    "lm_source_coding": {"lm": {"entropy": 6.7, "coded": 6.74, "coded_words": 6.9, "seconds": 3.0}},
    "official_cost": {"referential": {"cases": {"vector/soft": {"games_per_s": 54.2}}},
                      "generation": {"fp32_batch_1": {"tokens_per_s": 53.2}}},
    "protocol_power": {"max_deviation": 0.018, "within_2_percent": True},
    "reconstruction_bounds": {"splits": {
        "validation (before)": {"lines": {"20 dB": {"lossless_prefix_at_capacity": 0.539}}},
        "test (now: the passages the trials play)": {"lines": {"20 dB": {"lossless_prefix_at_capacity": 0.519}}}}},
    "separation_header": {"entries": {"n8-k20": {"header_bits_huffman": 1.5},
                                      "n16-k40": {"header_bits_huffman": 2.5}}},
    "separation_link": {"links": [{"n": 8, "unigram": None, "bigram": None},
                                  {"n": 32, "unigram": {"frame_tokens_right_when_frame_ok": 1.0},
                                   "bigram": {"frame_tokens_right_when_frame_ok": None}}]},
    "separation_oracle": {"summary": {"standard/exact": {"mean_test": 0.31}}},
    "sim_scaling": {"per_protocol": {"vector": {"speedup": 1.87}, "quantized": {"speedup": 1.84},
                                     "uncoded-tokens": {"speedup": 1.24}}},
}


# channel_throughput since issue 30: each latent protocol timed three ways; the goal is on the cold cache's
CHANNEL_THROUGHPUT_MODES = {"benchmark": "channel_throughput", "protocols": {
    "uncoded-tokens": {"fraction_of_matmul_bound": None},
    **{f"{name}/{mode}": {"fraction_of_matmul_bound": value} for name in ("vector", "quantized")
       for mode, value in (("before", 0.3), ("cold", 0.55), ("warm", None))}}}


def write(directory: Path, bench: str, data: object | str) -> Path:
    """``directory/<bench>.json`` holding ``data`` (a string as is, anything else as JSON)."""
    path = directory / f"{bench}.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=1) + "\n")
    return path


def rows_of(rows: list[summary.Row], bench: str) -> list[summary.Row]:
    return [r for r in rows if r.bench == bench]


def test_every_bench_has_a_goal_entry_and_every_entry_a_bench():
    benches = {p.stem for p in (ROOT / "bench").glob("*.py")} - {"summary"}
    named = {g.bench for g in summary.GOALS}
    assert benches - named == set(), "benches with no row in bench/summary.py's GOALS"
    assert named - benches == set(), "GOALS rows that name no bench/<name>.py"
    for g in summary.GOALS:
        assert (g.goal is None) == (g.direction == ""), g
        assert g.direction in ("", ">=", "<="), g


def test_ae_quality_goals_are_the_benchs_own_targets():
    tree = ast.parse((ROOT / "bench" / "ae_quality.py").read_text())
    consts = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
              for t in node.targets if isinstance(t, ast.Name) and t.id.startswith("TARGET_")}
    goals = {g.measure: g.goal for g in summary.GOALS if g.bench == "ae_quality"}
    assert sorted(goals.values()) == sorted(consts.values())


def test_every_row_reads_its_figure_from_the_benchs_json_shape(tmp_path):
    assert set(SAMPLES) == {g.bench for g in summary.GOALS}
    for bench, data in SAMPLES.items():
        write(tmp_path, bench, data)
    rows = summary.summarize(tmp_path)
    assert [r.status for r in rows if r.status not in ("met", "MISSED", "no goal")] == []
    got = {(r.bench, r.measure): r.value for r in rows}
    assert got[("calm_diagnostics", "CALM energy loss: 0 = marginal, 1 = oracle")] == pytest.approx(0.5)
    assert [r.value for r in rows_of(rows, "separation_link")] == [1.0]
    assert [r.value for r in rows_of(rows, "separation_header")] == [2.0]
    assert [r.value for r in rows_of(rows, "gpu_train")] == [800.0]
    assert [r.value for r in rows_of(rows, "reconstruction_bounds")] == [0.519]


def test_channel_throughput_goal_reads_the_cold_cache_timing_where_there_are_three(tmp_path):
    write(tmp_path, "channel_throughput", CHANNEL_THROUGHPUT_MODES)
    rows = rows_of(summary.summarize(tmp_path), "channel_throughput")
    assert [(r.value, r.status) for r in rows] == [(0.55, "met"), (0.55, "met")]


def test_met_and_missed_in_both_directions(tmp_path):
    write(tmp_path, "channel_throughput", SAMPLES["channel_throughput"] | {"protocols": {
        "vector": {"fraction_of_matmul_bound": 0.6}, "quantized": {"fraction_of_matmul_bound": 0.4}}})
    write(tmp_path, "protocol_power", {"max_deviation": 0.01})
    write(tmp_path, "sim_scaling", {"per_protocol": {"vector": {"speedup": 1.8}, "quantized": {"speedup": 1.79}}})
    rows = summary.summarize(tmp_path)
    vector, quantized = rows_of(rows, "channel_throughput")  # >= 0.5
    assert (vector.status, vector.ratio) == ("met", pytest.approx(1.2))
    assert (quantized.status, quantized.ratio) == ("MISSED", pytest.approx(0.8))
    assert [r.status for r in rows_of(rows, "sim_scaling")] == ["met", "MISSED"]  # the goal itself is met
    (power,) = rows_of(rows, "protocol_power")  # <= 0.02: the ratio is goal / value
    assert (power.status, power.ratio, power.goal_text) == ("met", pytest.approx(2.0), "<= 0.02")

    write(tmp_path, "protocol_power", {"max_deviation": 0.04})
    (power,) = rows_of(summary.summarize(tmp_path), "protocol_power")
    assert (power.status, power.ratio) == ("MISSED", pytest.approx(0.5))
    write(tmp_path, "protocol_power", {"max_deviation": 0.0})
    (power,) = rows_of(summary.summarize(tmp_path), "protocol_power")
    assert (power.status, power.ratio, power.ratio_text) == ("met", None, "inf")


def test_a_null_that_means_never_reached_is_missed_and_no_goal_rows_say_so(tmp_path):
    write(tmp_path, "calm_vs_baseline", SAMPLES["calm_vs_baseline"])
    write(tmp_path, "coded_ber", SAMPLES["coded_ber"])
    rows = summary.summarize(tmp_path)
    flops = rows_of(rows, "calm_vs_baseline")[0]
    assert (flops.status, flops.value, flops.value_text, flops.ratio_text) == ("MISSED", None, "never reached", "—")
    assert [(r.status, r.goal_text, r.ratio) for r in rows_of(rows, "coded_ber")] == [("no goal", "—", None)] * 2
    write(tmp_path, "calm_vs_baseline", SAMPLES["calm_vs_baseline"] | {"calm_over_baseline_flops": 0.5})
    flops = rows_of(summary.summarize(tmp_path), "calm_vs_baseline")[0]
    assert (flops.status, flops.ratio, flops.value_text) == ("met", pytest.approx(1.2), "0.5 x")


def test_missing_damaged_and_figureless_json_are_told_apart(tmp_path):
    write(tmp_path, "protocol_power", '{"max_deviation": 0.01, "rows": [')  # cut short
    write(tmp_path, "sim_scaling", "")
    write(tmp_path, "coded_ber", "[1, 2]")
    write(tmp_path, "channel_throughput", {"protocols": {"vector": {"fraction_of_matmul_bound": 0.6}}})
    rows = summary.summarize(tmp_path)
    assert {r.status for r in rows_of(rows, "ae_quality")} == {"not run"}
    assert {(r.status, r.note) for r in rows_of(rows, "ae_quality")} == {("not run", "missing")}
    for bench in ("protocol_power", "sim_scaling", "coded_ber"):
        assert {r.status for r in rows_of(rows, bench)} == {"damaged"}, bench
        assert all(r.note.startswith("damaged: ") and r.value is None for r in rows_of(rows, bench))
    assert [r.status for r in rows_of(rows, "channel_throughput")] == ["met", "no value"]
    text = summary.as_text(rows, tmp_path)
    assert "protocol_power: JSON damaged: not valid JSON" in text and "sim_scaling: JSON damaged: empty" in text
    assert "no JSON (not run): ae_quality, calm_diagnostics, calm_vs_baseline, generation_speed, gpu_train," in text


def test_progress_lines_before_the_json_are_skipped(tmp_path):
    write(tmp_path, "sim_scaling", "[ae] training the micro autoencoder\n[ae] trained 20 steps\n"
          + json.dumps(SAMPLES["sim_scaling"]) + "\n")
    write(tmp_path, "protocol_power", "progress {not json}\n" + json.dumps({"max_deviation": 0.01}, indent=1))
    rows = summary.summarize(tmp_path)
    assert [r.value for r in rows_of(rows, "sim_scaling")] == [1.87, 1.84]
    assert [r.status for r in rows_of(rows, "protocol_power")] == ["met"]


def test_cli_prints_text_json_and_markdown_and_exits_0_when_goals_are_missed(tmp_path, capsys):
    write(tmp_path, "channel_throughput", SAMPLES["channel_throughput"])  # both rows MISSED
    write(tmp_path, "sim_scaling", "{")
    assert summary.main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    header = next(line for line in text.splitlines() if line.startswith("benchmark "))
    assert header.split() == ["benchmark", "measure", "value", "goal", "ratio", "status"]
    assert "MISSED" in text and "damaged" in text and "not run" in text

    assert summary.main([str(tmp_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["rows"]) == len(summary.GOALS)
    by_bench = {r["bench"]: r for r in out["rows"]}
    assert [(r["status"], r["value"]) for r in out["rows"] if r["bench"] == "channel_throughput"] == [
        ("MISSED", 0.45), ("MISSED", 0.44)]
    assert by_bench["sim_scaling"]["status"] == "damaged" and by_bench["ae_quality"]["status"] == "not run"

    assert summary.main([str(tmp_path), "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| benchmark | measure | value | goal | ratio | status |"
    assert len([line for line in lines if line.startswith("| ")]) == 1 + len(summary.GOALS)
    assert "\\|mean power per symbol - 1\\|" in "\n".join(lines)  # a | in a cell is escaped


def test_a_missing_directory_is_one_line_and_exit_2(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "summary.py"), str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "nope: no such directory" in done.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_bench_saves_each_json_and_prints_the_table(tmp_path):
    """The Makefile's bench target on two stand-in benches (in a scratch directory, with its own runs/)."""
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "summary.py").symlink_to(ROOT / "bench" / "summary.py")
    (tmp_path / "bench" / "protocol_power.py").write_text(
        "import sys\nprint('progress', file=sys.stderr)\nprint('{\"max_deviation\": 0.01}')\n")
    (tmp_path / "bench" / "sim_scaling.py").write_text("raise SystemExit(3)\n")
    stale = tmp_path / "runs" / "bench" / "json" / "coded_ber.json"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")

    def make(*benches: str) -> subprocess.CompletedProcess:
        return subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "-C", str(tmp_path), "bench", "STAMP=",
                               f"BIN={Path(sys.executable).parent}", f"BENCHES={' '.join(benches)}"],
                              capture_output=True, text=True, timeout=120)

    done = make("bench/protocol_power.py", "bench/summary.py")
    assert done.returncode == 0, done.stdout + done.stderr
    saved = tmp_path / "runs" / "bench" / "json"
    assert json.loads((saved / "protocol_power.json").read_text()) == {"max_deviation": 0.01}
    assert sorted(p.name for p in saved.iterdir()) == ["protocol_power.json"]  # the stale one is gone
    assert '{"max_deviation": 0.01}' in done.stdout and "progress" in done.stderr  # printed as before
    assert any(line.startswith("protocol_power") and line.endswith("met") for line in done.stdout.splitlines())

    done = make("bench/sim_scaling.py", "bench/protocol_power.py")  # the first fails: the run stops, fails
    assert done.returncode != 0
    assert sorted(p.name for p in saved.iterdir()) == []
    rows = [line for line in done.stdout.splitlines() if line.startswith(("sim_scaling ", "protocol_power "))]
    assert len(rows) == 3 and all(line.endswith("not run") for line in rows)
