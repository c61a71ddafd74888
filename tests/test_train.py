"""calm.train: schedule, exact resume, NaN guard (one process), and Ray Train with 2 CPU workers."""

import json
import math

import numpy as np
import pytest
import torch
from tokenizers import ByteLevelBPETokenizer

from calm.autoencoder import AutoencoderConfig
from calm.checkpoint import load_pretrained, read_safetensors
from calm.loop import lr_at
from calm.tokenizer import load_tokenizer
from calm.train import (
    AutoencoderTask,
    TrainConfig,
    newest_checkpoint,
    train_local,
)

pytestmark = pytest.mark.ray  # the Ray Train runs use the shared Ray

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. To be, or not to be, that is the question: whether "
        "'tis nobler in the mind to suffer the slings and arrows of outrageous fortune. ")


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator([TEXT * 4], vocab_size=300, min_frequency=1,
                            special_tokens=["<|pad|>", "<|endoftext|>"], show_progress=False)
    d = tmp_path_factory.mktemp("tok")
    bpe.save(str(d / "tokenizer.json"))
    return load_tokenizer(d)


def tiny_task(vocab_size):
    return AutoencoderTask(AutoencoderConfig(K=4, latent_dim=8, hidden_size=16, intermediate_size=32,
                                             vocab_size=vocab_size))


def stream(n=4000, vocab=300, seed=0):
    return np.random.default_rng(seed).integers(2, vocab, size=n).astype(np.int32)


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=110, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.1 + 0.9 * 0.5)  # half way through the cosine
    assert lr_at(110, cfg) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="TrainConfig.lr"):
        TrainConfig(lr=math.inf)
    with pytest.raises(ValueError, match="TrainConfig.batch_size"):
        TrainConfig(batch_size=0)


def test_batch_is_a_function_of_seed_step_and_rank():
    task = tiny_task(300)
    ids = stream()
    a = task.sample_batch(ids, np.random.default_rng([0, 5, 0]), 16)
    b = task.sample_batch(ids, np.random.default_rng([0, 5, 0]), 16)
    c = task.sample_batch(ids, np.random.default_rng([0, 5, 1]), 16)
    assert a.shape == (16, 4) and torch.equal(a, b) and not torch.equal(a, c)
    # every row is a window of the stream
    windows = np.lib.stride_tricks.sliding_window_view(ids, 4)  # (T-3, 4)
    assert all((windows == row.numpy()).all(1).any() for row in a)


def test_resume_continues_exactly(tmp_path, tok):
    cfg = TrainConfig(steps=8, batch_size=16, lr=1e-2, warmup=2, checkpoint_every=4, val_every=4, val_size=64,
                      seed=3)
    ids, val = stream(), stream(400, seed=1)
    full = train_local(tiny_task(len(tok)), ids, cfg, val_ids=val, tokenizer=tok, checkpoint_dir=tmp_path)
    assert full.step == 8 and [h["step"] for h in full.history] == [4, 8]
    assert newest_checkpoint(tmp_path).name == "step_0000008"
    # as if the run had died after step 4: drop the last checkpoint and resume
    final = read_safetensors(tmp_path / "step_0000008" / "model.safetensors")
    for f in (tmp_path / "step_0000008").iterdir():
        f.unlink()
    (tmp_path / "step_0000008").rmdir()
    resumed = train_local(tiny_task(len(tok)), ids, cfg, val_ids=val, tokenizer=tok, checkpoint_dir=tmp_path,
                          resume=True)
    assert resumed.step == 8
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, final[k]), k
    def strip(history):
        return [{k: v for k, v in h.items() if k != "elapsed"} for h in history]

    assert strip(resumed.history) == strip(full.history)
    # the training checkpoint is also a plain checkpoint
    model, _ = load_pretrained(tmp_path / "step_0000008")
    assert model.config == resumed.model.config


class PoisonedTask(AutoencoderTask):
    """The real autoencoder task whose loss turns NaN from the ``bad_from``-th call on (fault injection)."""

    def __init__(self, config, bad_from):
        super().__init__(config)
        self.calls, self.bad_from = 0, bad_from

    def loss(self, model, batch, generator):
        loss, metrics = super().loss(model, batch, generator)
        self.calls += 1
        return (loss * math.nan if self.calls >= self.bad_from else loss), metrics


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tok):
    cfg = TrainConfig(steps=20, batch_size=16, lr=1e-2, warmup=2, checkpoint_every=2, val_every=2, val_size=64)
    task = PoisonedTask(tiny_task(len(tok)).config, bad_from=6)
    result = train_local(task, stream(), cfg, tokenizer=tok, checkpoint_dir=tmp_path)
    assert result.stopped is not None and "non-finite loss" in result.stopped and "step 6" in result.stopped
    assert result.step == 5  # the poisoned step made no update
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_0000002", "step_0000004"]
    for v in result.model.state_dict().values():
        assert torch.isfinite(v).all()
    weights = read_safetensors(newest_checkpoint(tmp_path) / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values())


@pytest.mark.slow
def test_ray_two_workers_checkpoint_then_resume(tmp_path, monkeypatch, ray_session):
    """Both runs join the test process's shared local Ray (tests/conftest.py), as a run joins a cluster: a second
    Ray started here for them would cost two Ray starts (this one's and the shared one's again after it)."""
    from calm.train import main

    monkeypatch.setenv("LATENTCOMM_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus.txt"
    paragraphs = [f"{i} {TEXT[i % 50:]}{TEXT[: i % 50]}" for i in range(40)]
    corpus.write_text("\n\n".join(paragraphs))
    out = tmp_path / "run"
    common = ["autoencoder", "--preset", "tiny", "--corpus", f"text:{corpus}", "--tokenizer", "bpe:300",
              "--out", str(out), "--workers", "2", "--gpu", "off", "--no-progress",
              "--hidden-size", "16", "--latent-dim", "8", "--intermediate-size", "32", "--batch-size", "16",
              "--checkpoint-every", "2", "--val-every", "2", "--val-size", "64", "--warmup", "2",
              "--tracking", "mlflow"]
    first = main(common + ["--steps", "4"])
    assert first.step == 4
    state = json.loads((newest_checkpoint(out / "ray") / "train_state.json").read_text())
    assert state["step"] == 4 and state["world_size"] == 2
    # an existing run is not overwritten by accident
    with pytest.raises(FileExistsError, match="--resume"):
        main(common + ["--steps", "6"])
    second = main(common + ["--steps", "6", "--resume"])
    assert second.step == 6
    assert [h["step"] for h in second.history] == [2, 4, 6]  # the resumed run kept the first run's history
    model, tokenizer = load_pretrained(out)
    assert model.config.K == 4 and len(tokenizer) == 300
    newest = read_safetensors(newest_checkpoint(out / "ray") / "model.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(v, newest[k]), k
    # MLflow, in the local store beside --out: one run (the refused call opened none), resumed by --resume, with the
    # curve of every loss term that rank 0 logged as it trained, the settings and the exported files
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("calm.train-autoencoder").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert json.loads((out / "tracking.json").read_text())["run_id"] == run_id
    for term in ("train_loss", "train_ce", "train_kl", "val_acc"):
        assert [m.step for m in client.get_metric_history(run_id, term)] == [2, 4, 6], term
    losses = {m.step: m.value for m in client.get_metric_history(run_id, "train_loss")}
    assert losses == {h["step"]: pytest.approx(h["train_loss"]) for h in second.history}
    params = runs[0].data.params
    # MLflow parameters are immutable: the resumed run's new value is kept as a tag, never silently dropped
    assert params["train.steps"] == "4" and runs[0].data.tags["changed.train.steps"] == "6"
    assert params["model.latent_dim"] == "8" and params["corpus"] == f"text:{corpus}"
    assert runs[0].data.tags["git_commit"] and runs[0].data.tags["version.torch"] == torch.__version__
    assert {"config.json", "tokenizer.json", "train_state.json"} <= {a.path for a in client.list_artifacts(run_id)}


def test_gradient_accumulation_averages_micro_batches():
    """grad_accum = 2: micro-batch 0 is the batch a step without accumulation draws, micro-batch 1 comes from
    [seed, step, rank, 1]; the update uses the mean of their gradients and the logged loss is their mean."""
    from calm.loop import _accumulate, step_seed

    task, ids = tiny_task(300), stream()
    cfg1, cfg2 = TrainConfig(steps=1, batch_size=8, seed=3), TrainConfig(steps=1, batch_size=8, seed=3, grad_accum=2)
    torch.manual_seed(0)
    model = task.build_model()
    grads, losses = [], []
    for m in range(2):
        model.zero_grad(set_to_none=True)
        rng = np.random.default_rng([3, 7, 0] if m == 0 else [3, 7, 0, m])
        gen = torch.Generator().manual_seed(step_seed(3, 7, 0, 1 if m == 0 else 100 + m))
        loss, _ = task.loss(model, task.sample_batch(ids, rng, 8), gen)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        losses.append(loss.item())
    model.zero_grad(set_to_none=True)
    single, _ = _accumulate(task, model, model, ids, cfg1, 7, 0, torch.device("cpu"), False)
    assert single.item() == pytest.approx(losses[0])
    for p, g in zip(model.parameters(), grads[0]):
        torch.testing.assert_close(p.grad, g)
    model.zero_grad(set_to_none=True)
    mean, metrics = _accumulate(task, model, model, ids, cfg2, 7, 0, torch.device("cpu"), False)
    assert mean.item() == pytest.approx(sum(losses) / 2) and set(metrics)
    for p, g0, g1 in zip(model.parameters(), grads[0], grads[1]):
        torch.testing.assert_close(p.grad, (g0 + g1) / 2)
    with pytest.raises(ValueError, match="grad_accum"):
        TrainConfig(grad_accum=0)
