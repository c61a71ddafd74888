"""The main experiment: config and CLI, resume of an interrupted sweep, determinism, a killed agent."""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from experiments.referential_game import COLUMNS, Config, main, trial_grid

pytestmark = pytest.mark.ray

MICRO = dict(ae_hidden_size=32, ae_intermediate_size=64, ae_latent_dim=16, ae_steps=20, ae_batch_size=32,
             ae_time_limit=0.0)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny sweep: 2 sigmas x 3 protocols x the hard receiver x 1 seed = 6 trials of 64 games (the soft receiver
    plays in test_leak_check_fires_for_a_protocol_that_peeks_at_the_target and tests/test_agents.py)."""
    return Config(results_dir=str(tmp_path_factory.mktemp("results")),
                  runs_dir=str(tmp_path_factory.getbasetemp() / "latentcomm-runs"),
                  passage_length=8, channel_uses=(32,), candidates=8, sigmas=(0.0, 3.0), seeds=(0,),
                  protocols=("vector", "hash", "uncoded-tokens"), receivers=("hard",), episodes=64, batch_size=64,
                  num_passages=256,
                  fit_passages=512, plots=False, **MICRO)


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="sigmas"):
        Config(sigmas=(0.5, -1.0))
    with pytest.raises(ValueError, match="candidates"):
        Config(candidates=1)
    with pytest.raises(ValueError, match="protocols"):
        Config(protocols=("vector", "smoke-signals"))
    with pytest.raises(ValueError, match="episodes"):
        Config(episodes=100, batch_size=64)


def test_help_lists_every_field(capsys):
    from calm.cli import parse_config

    with pytest.raises(SystemExit) as exc:
        parse_config(Config, ["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(Config):
        assert "--" + f.name.replace("_", "-") in out
    cfg = parse_config(Config, ["--sigmas", "0", "0.5", "--protocols", "uncoded-tokens", "hash", "--checkpoint", "none",
                                "--no-plots", "--channel-uses", "8", "32", "--channels", "awgn", "rayleigh"])
    assert cfg.sigmas == (0.0, 0.5) and cfg.protocols == ("uncoded-tokens", "hash") and cfg.checkpoint is None
    assert not cfg.plots and cfg.channel_uses == (8, 32) and cfg.channels == ("awgn", "rayleigh")


def test_grid_is_the_cross_product():
    cfg = Config(channels=("awgn", "erasure"), full=True)
    grid = trial_grid(cfg)
    assert len(grid) == 5 * 2 * 2 * 2 * 7 * 3  # protocols x receivers x channels x n x sigmas x seeds (--full: 3)
    assert len(trial_grid(Config(channels=("awgn", "erasure")))) == len(grid) // 3 * 2  # the default: 2 seeds
    assert len({spec["key"] for spec in grid}) == len(grid)
    # a protocol that cannot be built at a budget is left out there only
    assert len(trial_grid(cfg, {("coded", 8)})) == len(grid) - 2 * 2 * 7 * 3


def test_interrupted_sweep_reruns_only_missing_trials(ray_session, base):
    grid_size = len(trial_grid(base))
    # an interrupted sweep: it stops after 3 trials
    first = main(dataclasses.replace(base, run_name="resume", max_trials=3))
    assert len(first.ran) == 3 and first.rows == 3 and first.total == grid_size == 6
    # the same command again runs exactly the 3 missing trials
    second = main(dataclasses.replace(base, run_name="resume"))
    assert len(second.ran) == grid_size - 3
    assert not set(second.ran) & set(first.ran)
    assert second.rows == grid_size
    # a third run has nothing left to do
    assert main(dataclasses.replace(base, run_name="resume")).ran == []

    frame = pd.read_csv(second.run_dir / "results.csv")
    assert list(frame.columns) == COLUMNS
    assert len(frame) == grid_size
    assert not frame.duplicated(["protocol", "receiver", "channel", "channel_uses", "sigma", "seed"]).any()
    assert ((frame.success_ci_low <= frame.success) & (frame.success <= frame.success_ci_high)).all()
    assert (frame.delivered_bits <= math.log2(8) + 1e-9).all()
    finite = np.isfinite(frame.capacity_bits)
    assert (frame.delivered_bits[finite] <= frame.capacity_bits[finite]).all()
    assert (frame.channel_uses == 32).all()  # equal bandwidth for every protocol
    # behaviour: noise at sigma 3 (SNR -9.5 dB) hurts the hard token receiver, which is perfect-ish without it
    token_hard = frame[(frame.protocol == "uncoded-tokens") & (frame.receiver == "hard")].set_index("sigma").success
    assert token_hard[0.0] > token_hard[3.0] + 0.3
    # bits sent: the hash sends n bits, the vector none (analog), uncoded tokens what fits
    sent = frame.groupby("protocol").bits_sent.first()
    assert sent["hash"] == 32 and np.isnan(sent["vector"]) and sent["uncoded-tokens"] <= 32
    assert frame[frame.protocol == "hash"].token_accuracy.isna().all()  # a hash sends no tokens
    assert (second.run_dir / "summary.md").is_file()
    record = (second.run_dir / "config.json").read_text()
    for key in ("git_commit", "checkpoint_id", "ray_version", "torch_version", "settings_hash"):
        assert key in record


def test_killing_an_agent_mid_sweep_still_yields_every_row_once_and_the_same_csv(ray_session, base):
    """The listener is killed once the first row is written; Ray restarts it and replays its calls. Nothing here
    races the restart: the killer does not call the agent again (the sweep may end, and kill the agents, before
    a watcher would see the new process); Ray's actor table says afterwards that a new process took over."""
    # GCS's actor table: it keeps an ended actor's record
    from ray._private.state import actors as actor_table

    ray = ray_session
    cfg = dataclasses.replace(base, run_name="killed", max_concurrent=1)
    rows_dir = Path(cfg.results_dir) / "killed" / "rows"
    seen: dict = {}

    def kill_listener_after_first_row():
        try:
            deadline = time.time() + 300
            while time.time() < deadline:
                if rows_dir.is_dir() and any(rows_dir.glob("*.json")):
                    actor = ray.get_actor("killed-listener0", namespace="latentcomm")
                    seen["actor_id"] = actor._actor_id.hex()
                    seen["rows_at_kill"] = len(list(rows_dir.glob("*.json")))
                    # the pid from the GCS, not from the agent: a call would queue behind its game calls while
                    # the last rows of a warm sweep (0.2 s for 5) arrive
                    seen["pid"] = actor_table(seen["actor_id"])["Pid"]
                    ray.kill(actor, no_restart=False)  # dies now; Ray restarts it, calls are replayed
                    return
                time.sleep(0.01)
        except Exception as exc:  # reported by the assertions below
            seen["error"] = repr(exc)

    killer = threading.Thread(target=kill_listener_after_first_row, daemon=True)
    killer.start()
    result = main(cfg)
    killer.join(timeout=60)
    grid_size = len(trial_grid(cfg))
    assert "error" not in seen and "rows_at_kill" in seen, f"the agent was never killed: {seen}"
    assert seen["rows_at_kill"] < grid_size, f"the kill came after the sweep had finished: {seen}"
    # the sweep is over (its agents ended): the listener was restarted once, in a new process
    record = actor_table(seen["actor_id"])
    seen.update(restarts=record["NumRestarts"], new_pid=record["Pid"])
    assert seen["restarts"] == 1 and seen["new_pid"] not in (0, seen["pid"]), seen
    assert result.failed == [], (result, seen)
    frame = pd.read_csv(result.run_dir / "results.csv")
    assert len(frame) == grid_size, (len(frame), seen)
    assert not frame.duplicated(["protocol", "receiver", "channel", "channel_uses", "sigma", "seed"]).any()
    # same settings and seed as the (interrupted, resumed) run of the test above: a byte-identical
    # results.csv, though an agent died and was restarted in the middle of this one
    other = Path(cfg.results_dir) / "resume" / "results.csv"
    if not other.is_file():  # this test alone: make the undisturbed reference run here
        main(dataclasses.replace(base, run_name="resume"))
    pd.testing.assert_frame_equal(frame, pd.read_csv(other))
    assert (result.run_dir / "results.csv").read_bytes() == other.read_bytes()


def test_a_run_directory_refuses_another_checkpoint(base):
    """Rows and fitted protocols of one autoencoder never mix with another's (e.g. after retraining)."""
    import json

    from experiments.common.config import settings_hash

    cfg = dataclasses.replace(base, run_name="mismatch")
    run_dir = Path(cfg.results_dir) / "mismatch"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(
        json.dumps({"settings_hash": settings_hash(cfg), "checkpoint_id": "ae-old@000000000000"})
    )
    with pytest.raises(ValueError, match="checkpoint ae-old@000000000000"):
        main(cfg)


def test_leak_check_fires_for_a_protocol_that_peeks_at_the_target(base):
    """A listener that reads the target around the channel wins where capacity forbids it: n = 8 channel
    uses at sigma 2 carry at most 1.29 bits, but a game of C = 8 needs 3. The leak check flags exactly it."""
    from agents import CALMAgentCore
    from experiments.common.models import ensure_checkpoint
    from experiments.referential_game import make_channel, play_trial
    from experiments.referential_game_report import leaks
    from protocols import HashProtocol, HashProtocolConfig

    class PeekingHash(HashProtocol):
        """Sends a fair hash, but the listener's score looks at what the speaker encoded."""

        def encode(self, ids):
            self.peeked = np.array(ids)
            return super().encode(ids)

        def score(self, symbols, candidates, **kwargs):
            return (candidates == self.peeked[:, None, :]).all(axis=-1).astype(np.float64)

    checkpoint = ensure_checkpoint(base)
    passages = np.random.default_rng(0).integers(0, 300, size=(256, 8))
    agent = CALMAgentCore(str(checkpoint), {})
    for name, cls in (("hash", HashProtocol), ("peek", PeekingHash)):
        agent.protocols[f"{name}@8"] = cls(HashProtocolConfig(vocab_size=agent.model.config.vocab_size, budget=8)).fit(passages)
    settings = {"episodes": 128, "batch_size": 128, "candidates": 8, "distractors": "uniform",
                "vocab_size": agent.model.config.vocab_size, "checkpoint": "test", "erasure_p": 0.5,
                "fading_block": None, "facts": {"hash@8": {"bits_sent": 8}, "peek@8": {"bits_sent": 8}}}
    rows = [play_trial({"protocol": name, "receiver": "soft", "channel": "awgn", "channel_uses": 8, "sigma": 2.0,
                        "seed": 0}, agent, agent, passages, settings) for name in ("hash", "peek")]
    frame = pd.DataFrame(rows, columns=COLUMNS)
    assert make_channel("awgn", 2.0).capacity_per_use() * 8 == pytest.approx(frame.capacity_bits.iloc[0])
    assert frame.capacity_bits.iloc[0] < math.log2(8)
    flagged = leaks(frame)
    assert list(flagged.protocol) == ["peek"], frame[["protocol", "success", "capacity_bits"]]


def test_snr_for_success_and_the_bound():
    """The SNR at 90% success is interpolated in dB; the bound is Fano inverted at capacity."""
    from experiments.referential_game_report import pooled, snr_at_success

    rows = []
    for sigma, success in ((0.5, 1.0), (1.0, 0.95), (2.0, 0.85)):
        rows.append({"protocol": "hash", "receiver": "soft", "channel": "awgn", "sigma": sigma,
                     "snr_db": -20 * math.log10(sigma), "channel_uses": 8, "candidates": 8, "bits_sent": 8.0,
                     "capacity_bits": 4 * math.log2(1 + 1 / sigma**2), "success": success, "success_ci_low": 0,
                     "success_ci_high": 1, "delivered_bits": 0, "efficiency": 0, "token_accuracy": float("nan"),
                     "episodes": 1000, "seed": 0, "checkpoint": "x"})
    table = pooled(pd.DataFrame(rows, columns=COLUMNS))
    at = snr_at_success(table, 0.9).snr_db_at_target.iloc[0]
    # between -6.02 dB (0.85) and 0 dB (0.95), halfway
    assert at == pytest.approx(-20 * math.log10(2.0) / 2, abs=1e-6)
    from protocols.metrics import best_success, fano_delivered_bits

    for r in table.itertuples():  # the bound: the success at which Fano's bound meets capacity
        assert r.bound == best_success(r.capacity_bits, 8)
        assert r.bound == 1.0 or fano_delivered_bits(r.bound, 8) == pytest.approx(r.capacity_bits, abs=1e-6)
    # 0.99: between 0 dB (0.95) and 6.02 dB (1.0), 80% of the way
    assert snr_at_success(table, 0.99).snr_db_at_target.iloc[0] == pytest.approx(0.8 * 20 * math.log10(2.0), abs=1e-6)
    assert snr_at_success(table, 0.8).snr_db_at_target.iloc[0] == -math.inf  # reached at the noisiest point


def test_cli_errors_after_parsing_are_one_line_with_status_2(tmp_path):
    """A missing checkpoint is found after argument parsing: one line on stderr, exit status 2, no traceback."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "experiments.referential_game", "--checkpoint", str(tmp_path / "nope"),
                           "--results-dir", str(tmp_path)], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "nope" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
