"""Loaders check what they load (issue 27, "damage is named, never absorbed"): a truncated or garbled file, a
value of the wrong JSON kind, arrays of the wrong shape or holding NaN, a checkpoint of another model type, an
output path that cannot be written, a pickle given as a checkpoint. Each is refused with the file (or flag)
named, and the command-line tools say so in one line with exit status 2, before anything slow starts.

Tiny models built here; no Ray (the calm.train case checks it never imports Ray at all).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np
from safetensors.torch import load_file, save_file
from tokenizers import ByteLevelBPETokenizer

from calm.autoencoder import Autoencoder, AutoencoderConfig
from calm.baseline import BaselineConfig, TokenTransformer
from calm.checkpoint import CheckpointError, check_checkpoint, load_pretrained, save_pretrained
from calm.files import DamagedFileError
from calm.sae import TopKSAE, load_sae, save_sae
from calm.tokenizer import load_tokenizer
from protocols import (
    HashProtocol,
    HashProtocolConfig,
    UncodedTokenProtocol,
    UncodedTokenProtocolConfig,
    VectorProtocol,
    VectorProtocolConfig,
    load_protocol,
)
from protocols.alignment import AlignmentConfig, LatentAlignment

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. To be, or not to be, that is the question: whether "
        "'tis nobler in the mind to suffer the slings and arrows of outrageous fortune. ") * 4
L = 8  # tokens per protocol passage (two K = 4 chunks)


# ---- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A 300-id byte-level BPE with the bpe:* special ids, trained in memory."""
    directory = tmp_path_factory.mktemp("tok")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator([TEXT], vocab_size=300, min_frequency=1, special_tokens=["<|pad|>", "<|endoftext|>"],
                            show_progress=False)
    bpe.save(str(directory / "tokenizer.json"))
    return load_tokenizer(directory)


@pytest.fixture(scope="module")
def ae(tok) -> Autoencoder:
    torch.manual_seed(0)
    return Autoencoder(AutoencoderConfig(K=4, latent_dim=8, hidden_size=16, intermediate_size=32,
                                         vocab_size=len(tok))).eval()


@pytest.fixture()
def ae_dir(ae, tok, tmp_path) -> Path:
    return save_pretrained(ae, tmp_path / "ae", tok)


@pytest.fixture(scope="module")
def ids(tok) -> np.ndarray:
    return np.random.default_rng(0).integers(0, len(tok), (64, L))


def damaged_naming(path: Path):
    """``pytest.raises`` for a DamagedFileError whose message names ``path``."""
    return pytest.raises(DamagedFileError, match=str(path).replace(".", r"\."))


def poison(path: Path, name: str | None = None) -> str:
    """Put a NaN into the tensor ``name`` (the first one) of the safetensors file ``path``; return its name."""
    tensors = load_file(str(path))
    name = name or sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(path), metadata={"format": "pt"})
    return name


# ---- 1. saved protocols -----------------------------------------------------------------------------------


@pytest.fixture()
def saved(request, ae, ids, tmp_path) -> tuple[Path, object]:
    """A fitted protocol of the kind ``request.param`` saved in tmp_path/p; the autoencoder load needs."""
    kind = request.param
    if kind == "vector":
        proto = VectorProtocol(ae, VectorProtocolConfig(budget=8)).fit(ids)  # PCA: 16 latent dims -> 8
    elif kind == "token":
        proto = UncodedTokenProtocol(UncodedTokenProtocolConfig(vocab_size=ae.config.vocab_size, budget=32)).fit(ids)
    else:
        proto = HashProtocol(HashProtocolConfig(vocab_size=ae.config.vocab_size, budget=16)).fit(ids)
    proto.save(tmp_path / "p")
    return tmp_path / "p", ae


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _edit_json(path: Path, **changes) -> None:
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        target = meta
        *parents, last = key.split("__")
        for p in parents:
            target = target[p]
        target[last] = value
    path.write_text(json.dumps(meta))


PROTOCOL_DAMAGE = {
    "truncated protocol.json": ("protocol.json", lambda d: _truncate(d / "protocol.json")),
    "protocol.json not an object": ("protocol.json", lambda d: (d / "protocol.json").write_text("[1, 2]")),
    "seq_len a string": ("protocol.json", lambda d: _edit_json(d / "protocol.json", seq_len="8")),
    "budget a string": ("protocol.json", lambda d: _edit_json(d / "protocol.json", config__budget="8")),
    "config has an unknown field": ("protocol.json", lambda d: _edit_json(d / "protocol.json", config__typo=1)),
    "missing stats": ("protocol.safetensors", lambda d: (d / "protocol.safetensors").unlink()),
    "truncated stats": ("protocol.safetensors", lambda d: _truncate(d / "protocol.safetensors")),
    "pickled stats": ("protocol.safetensors",
                      lambda d: torch.save({"scale": torch.ones(1)}, d / "protocol.safetensors")),
}


@pytest.mark.parametrize("saved", ["vector", "token", "hash"], indirect=True)
@pytest.mark.parametrize("damage", sorted(PROTOCOL_DAMAGE))
def test_damaged_saved_protocol_names_the_file(saved, damage):
    directory, ae = saved
    name, spoil = PROTOCOL_DAMAGE[damage]
    spoil(directory)
    with damaged_naming(directory / name):
        load_protocol(directory, ae)


@pytest.mark.parametrize("saved", ["vector"], indirect=True)
@pytest.mark.parametrize("array, value", [("scale", np.nan), ("latent_mean", np.inf), ("pca_components", np.nan),
                                          ("latent_std", 0.0)])
def test_nan_or_impossible_protocol_stats_are_refused(saved, array, value):
    directory, ae = saved
    path = directory / "protocol.safetensors"
    stats = load_np(str(path))
    stats[array] = stats[array].copy()
    stats[array].reshape(-1)[0] = value
    save_np(stats, str(path))
    with pytest.raises(DamagedFileError, match=rf"protocol\.safetensors.*({array}|NaN/inf)"):
        load_protocol(directory, ae)


@pytest.mark.parametrize("saved", ["vector"], indirect=True)
@pytest.mark.parametrize("array, shape", [("pca_components", (16, 7)), ("latent_mean", (9,)), ("scale", (2,))])
def test_protocol_stats_of_the_wrong_shape_are_refused(saved, array, shape):
    directory, ae = saved
    path = directory / "protocol.safetensors"
    stats = load_np(str(path))
    stats[array] = np.zeros(shape)
    save_np(stats, str(path))
    with pytest.raises(DamagedFileError, match=rf"protocol\.safetensors.*{array} has shape"):
        load_protocol(directory, ae)


def test_a_directory_without_protocol_json_is_not_found(tmp_path, ae):
    with pytest.raises(FileNotFoundError, match="protocol.json"):
        load_protocol(tmp_path, ae)


@pytest.mark.parametrize("saved", ["vector"], indirect=True)
def test_seq_len_that_does_not_fit_the_autoencoder_is_damage(saved):
    directory, ae = saved
    _edit_json(directory / "protocol.json", seq_len=6)  # no multiple of K = 4
    with damaged_naming(directory / "protocol.json"):
        load_protocol(directory, ae)


def test_separation_bank_with_a_truncated_bank_file(tmp_path):
    from protocols.separation import SeparationProtocol, SeparationProtocolConfig, load_bank, save_bank
    from protocols.source_coding import TokenSourceModel

    V = 64
    ids = np.random.default_rng(0).integers(0, V, (32, 16))
    source = TokenSourceModel(V, "unigram").fit(ids)
    protos = [SeparationProtocol(SeparationProtocolConfig(vocab_size=V, budget=64, source_model="unigram", rate=r),
                                 source=source).fit(ids[:4]) for r in (0.5, 2 / 3)]
    save_bank(protos, tmp_path)
    assert len(load_bank(tmp_path)) == 2
    _truncate(tmp_path / "separation_bank.json")
    with damaged_naming(tmp_path / "separation_bank.json"):
        load_bank(tmp_path)
    save_bank(protos, tmp_path)
    _edit_json(tmp_path / "separation_bank.json", seq_len=17)
    with damaged_naming(tmp_path / "separation_bank.json"):
        load_bank(tmp_path)


# ---- 2. alignment ---------------------------------------------------------------------------------------


@pytest.fixture()
def alignment_dir(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    source = rng.standard_normal((16, 4))
    LatentAlignment(AlignmentConfig(method="ridge")).fit(source, source @ rng.standard_normal((4, 5))).save(tmp_path)
    return tmp_path


@pytest.mark.parametrize("damage, file", [
    (lambda d: _edit_json(d / "alignment.json", target_dim=6), "alignment.safetensors"),  # weight is (4, 5)
    (lambda d: _edit_json(d / "alignment.json", source_dim=3), "alignment.safetensors"),
    (lambda d: _edit_json(d / "alignment.json", target_dim="5"), "alignment.json"),
    (lambda d: _truncate(d / "alignment.json"), "alignment.json"),
    (lambda d: poison_np(d / "alignment.safetensors", "weight"), "alignment.safetensors"),
    (lambda d: (d / "alignment.safetensors").unlink(), "alignment.safetensors"),
], ids=["target_dim", "source_dim", "dim-a-string", "truncated-json", "nan-weight", "no-weights"])
def test_alignment_load_checks_sizes_and_values(alignment_dir, damage, file):
    assert LatentAlignment.load(alignment_dir).transform(np.zeros((2, 4))).shape == (2, 5)
    damage(alignment_dir)
    with damaged_naming(alignment_dir / file):
        LatentAlignment.load(alignment_dir)


def poison_np(path: Path, name: str) -> None:
    arrays = load_np(str(path))
    arrays[name] = arrays[name].copy()
    arrays[name].reshape(-1)[0] = np.nan
    save_np(arrays, str(path))


# ---- 3. SAE ---------------------------------------------------------------------------------------------


@pytest.fixture()
def sae_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_sae(TopKSAE(8, 24, 3), tmp_path / "sae")


@pytest.mark.parametrize("field, value", [("apply_b_dec_to_input", "false"), ("k", 2.7), ("k", "3"),
                                          ("d_in", 8.0), ("rescale_acts_by_decoder_norm", "false")])
def test_sae_config_values_of_the_wrong_json_kind(sae_dir, field, value):
    _edit_json(sae_dir / "cfg.json", **{field: value})
    with pytest.raises(DamagedFileError, match=rf"cfg\.json.*{field}"):
        load_sae(sae_dir)


def test_sae_nan_or_misshaped_weights(sae_dir):
    poison(sae_dir / "sae_weights.safetensors", "W_enc")
    with pytest.raises(DamagedFileError, match=r"sae_weights\.safetensors: holds NaN/inf in W_enc"):
        load_sae(sae_dir)
    _edit_json(sae_dir / "cfg.json", d_sae=25)
    with pytest.raises(DamagedFileError, match=r"sae_weights\.safetensors.*shape"):
        load_sae(sae_dir)


# ---- 4. checkpoints -------------------------------------------------------------------------------------


def test_nan_checkpoint_is_refused_naming_file_and_tensor(ae_dir):
    name = poison(ae_dir / "model.safetensors")
    with pytest.raises(DamagedFileError, match=rf"model\.safetensors: holds NaN/inf in {name}"):
        load_pretrained(ae_dir)


@pytest.mark.parametrize("field, value", [("K", 4.0), ("K", True), ("kl_clip", "0.5"), ("token_dropout", None)])
def test_checkpoint_config_values_of_the_wrong_json_kind(ae_dir, field, value):
    _edit_json(ae_dir / "config.json", **{f"config__{field}": value})
    with pytest.raises(DamagedFileError, match=rf"config\.json.*{field}"):
        load_pretrained(ae_dir)
    with pytest.raises(DamagedFileError, match=rf"config\.json.*{field}"):
        check_checkpoint(ae_dir)


def test_checkpoint_bool_field_read_from_a_string_is_refused(tok, tmp_path):
    """bool("false") is True: a baseline whose tie_embeddings is the string "false" would be built tied."""
    model = TokenTransformer(BaselineConfig(vocab_size=len(tok), hidden_size=16, num_layers=1, num_heads=2,
                                            intermediate_size=32, max_positions=16))
    save_pretrained(model, tmp_path / "b", tok)
    _edit_json(tmp_path / "b" / "config.json", config__tie_embeddings="false")
    with pytest.raises(DamagedFileError, match=r"config\.json.*tie_embeddings.*'false'"):
        load_pretrained(tmp_path / "b")


@pytest.mark.parametrize("cut", ["half", "one byte", "header"])
def test_truncated_weights_name_the_file(ae_dir, cut):
    path = ae_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes({"half": data[: len(data) // 2], "one byte": data[:-1], "header": data[:100]}[cut])
    for load in (load_pretrained, check_checkpoint):
        with damaged_naming(path):
            load(ae_dir)


def test_expect_names_the_model_type_it_got(ae, ae_dir, tok, tmp_path):
    import protocols.jscc_model  # noqa: F401  (registers the jscc model type)
    from protocols.jscc_model import JSCCModel, preset

    config = preset("tiny", ae.config, channel_uses=4, passage_length=L, hidden_size=16, train_negatives=0)
    save_pretrained(JSCCModel(config, autoencoder=ae), tmp_path / "adapter", tok)
    with pytest.raises(CheckpointError, match=r"adapter is a jscc checkpoint, not an autoencoder$"):
        load_pretrained(tmp_path / "adapter", expect="autoencoder")
    with pytest.raises(CheckpointError, match=r"ae is an autoencoder checkpoint, not a calm or a baseline$"):
        load_pretrained(ae_dir, expect=("calm", "baseline"))
    model, _ = load_pretrained(ae_dir, expect="autoencoder")
    assert isinstance(model, Autoencoder)
    # the agent knows what each of its checkpoints must be
    from agents.core import CALMAgentCore

    with pytest.raises(CheckpointError, match="not an autoencoder"):
        CALMAgentCore(str(tmp_path / "adapter"), {})


# ---- 5. python -m calm.evaluate ---------------------------------------------------------------------------


def run_cli(args: list[str], cwd: Path, env: dict | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """The command's result and its CPU seconds (user + system: the wall clock of a 2-core machine running the
    rest of the suite beside it would measure the load)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([PYTHON, *args], capture_output=True, text=True, cwd=cwd, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "error:" in lines[0], (done.returncode, done.stderr)
    return lines[0]


@pytest.fixture()
def corpus(tmp_path) -> str:
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(f"{i} {TEXT}" for i in range(30)))
    return f"text:{path}"


def test_evaluate_refuses_nan_weights(ae_dir, corpus, tmp_path):
    poison(ae_dir / "model.safetensors")
    done, _ = run_cli(["-m", "calm.evaluate", "autoencoder", str(ae_dir), "--corpus", corpus,
                       "--json", str(tmp_path / "out.json")], tmp_path)
    assert "NaN/inf" in one_line_error(done) and "model.safetensors" in done.stderr
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("where", ["under a file", "a directory"])
def test_evaluate_checks_the_json_path_before_evaluating(ae_dir, corpus, tmp_path, where):
    (tmp_path / "file").write_text("x")
    target = tmp_path / "file" / "out.json" if where == "under a file" else tmp_path
    done, _ = run_cli(["-m", "calm.evaluate", "autoencoder", str(ae_dir), "--corpus", corpus,
                       "--json", str(target)], tmp_path)
    assert "--json" in one_line_error(done)
    assert done.stdout == ""  # nothing was evaluated (the report table is never printed)


# ---- 6. python -m calm.train ------------------------------------------------------------------------------


@pytest.fixture()
def no_ray(tmp_path) -> dict:
    """An environment where importing ray fails loudly: a run that exits 2 with it never reached Ray."""
    fake = tmp_path / "fake-ray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('ray was imported')\n")
    return {"PYTHONPATH": f"{fake.parent}{os.pathsep}{ROOT}"}


@pytest.mark.parametrize("kind", ["pickle file", "pickled weights", "jscc given as autoencoder"])
def test_train_refuses_a_bad_ae_in_seconds_without_ray(ae, ae_dir, tok, tmp_path, no_ray, kind):
    if kind == "pickle file":
        bad = tmp_path / "ae.pt"
        torch.save(ae.state_dict(), bad)
    elif kind == "pickled weights":
        bad = ae_dir
        torch.save(ae.state_dict(), ae_dir / "model.safetensors")
    else:
        from protocols.jscc_model import JSCCModel, preset

        bad = tmp_path / "adapter"
        config = preset("tiny", ae.config, channel_uses=4, passage_length=L, hidden_size=16, train_negatives=0)
        save_pretrained(JSCCModel(config, autoencoder=ae), bad, tok)
    done, seconds = run_cli(["-m", "calm.train", "calm", "--ae", str(bad), "--tokenizer",
                             str(ae_dir / "tokenizer.json"), "--out", str(tmp_path / "run"), "--gpu", "off"],
                            tmp_path, env=no_ray)
    line = one_line_error(done)
    assert "--ae" in line or str(bad) in line, line
    assert {"pickle file": "is a file", "pickled weights": "not a safetensors file",
            "jscc given as autoencoder": "jscc checkpoint, not an autoencoder"}[kind] in line
    assert "ray was imported" not in done.stderr and seconds < 5.0, seconds
    assert not (tmp_path / "run").exists()


def test_train_config_refuses_non_finite_numbers():
    from calm.loop import TrainConfig

    for bad in (dict(lr=float("inf")), dict(lr=float("nan")), dict(time_limit=float("nan")), dict(seed=1.5)):
        with pytest.raises(ValueError, match="finite|integer"):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="finite"):
        AutoencoderConfig(kl_weight=float("inf"))
    with pytest.raises(ValueError, match="integer"):
        BaselineConfig(num_layers=2.0)


def test_damaged_training_state_is_named_not_skipped(tmp_path):
    """A resume used to skip a damaged train_state.json and quietly start from an older checkpoint."""
    from calm.loop import OPTIMIZER_FILE, TRAIN_STATE_FILE, newest_checkpoint

    for step in (4, 8):
        d = tmp_path / f"step_{step:07d}"
        d.mkdir()
        (d / TRAIN_STATE_FILE).write_text(json.dumps({"step": step}))
        (d / OPTIMIZER_FILE).write_bytes(b"x")
    assert newest_checkpoint(tmp_path).name == "step_0000008"
    (tmp_path / "step_0000008" / TRAIN_STATE_FILE).write_text('{"step": 8')
    with pytest.raises(DamagedFileError, match="step_0000008"):
        newest_checkpoint(tmp_path)
