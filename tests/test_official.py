"""The released CALM layout: our loader against the official code's own outputs, conversion, and refusals.

The fixture (tests/fixtures/official_calm, made by scripts/make_official_fixture.py with the official code at
commit c556310 and transformers 4.43.0) holds tiny randomly initialised models saved by the official
``save_pretrained``, fixed inputs, and what the official modules computed on them. Every parameter was drawn
from N(0, 0.2^2), biases and norm weights included, so a dropped or misplaced tensor changes the outputs.
Tolerance: 1e-5 absolute (float32; the measured differences are 0 and 6e-8).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from calm.checkpoint import CheckpointError, load_pretrained
from calm.convert import convert
from calm.energy_transformer import EnergyTransformer
from calm.files import DamagedFileError
from calm.official import load_released, read_released

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "official_calm"  # conftest.OFFICIAL_FIXTURE
TOKENIZER = FIXTURE / "tokenizer"
ATOL = 1e-5
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def outputs() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "outputs.safetensors"))


@pytest.fixture(scope="module")
def autoencoder():
    return load_released(FIXTURE / "autoencoder")


@pytest.fixture(scope="module")
def lm():
    return load_released(FIXTURE / "calm", tokenizer=TOKENIZER)


def copy_fixture(tmp_path: Path, kind: str) -> Path:
    out = tmp_path / kind
    shutil.copytree(FIXTURE / kind, out)
    for name in ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER / name, out / name)
    return out


def save_bin(directory: Path, state: dict) -> None:
    torch.save(state, directory / "pytorch_model.bin")


# ----------------------------------------------------------------------------------------------------------
# exactness against the official code's outputs


def test_autoencoder_means_log_stds_and_logits_match_the_official_code(autoencoder, outputs):
    model, _ = autoencoder
    mu, log_sigma = model.encode(outputs["ids"])
    dim = mu.shape[-1]
    torch.testing.assert_close(mu, outputs["ae_latent"][..., :dim], atol=ATOL, rtol=0)
    torch.testing.assert_close(log_sigma, outputs["ae_latent"][..., dim:], atol=ATOL, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model.decode(mu), outputs["ae_logits"], atol=ATOL, rtol=0)


def test_the_safetensors_save_without_the_tied_head_loads_the_same_weights(autoencoder):
    model, _ = autoencoder
    other, _ = load_released(FIXTURE / "autoencoder_st", tokenizer=TOKENIZER)
    assert other.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, other.state_dict()[k]) for k, a in model.state_dict().items())


def test_lm_hidden_states_head_samples_and_inner_decoder_match_the_official_code(lm, outputs):
    model, _ = lm
    assert isinstance(model, EnergyTransformer) and model.start is None
    ids = outputs["ids"]
    with torch.no_grad():
        # the official transformer's position t reads patch t and predicts patch t + 1; ours: h[:, t] predicts t
        torch.testing.assert_close(model.backbone(model.patch_inputs(ids)), outputs["lm_hidden"], atol=ATOL, rtol=0)
        torch.testing.assert_close(model.hidden(ids)[:, 1:], outputs["lm_hidden"][:, :-1], atol=ATOL, rtol=0)
        samples = model.head(outputs["lm_hidden"], outputs["head_noise"])  # the noise official sample() drew
        torch.testing.assert_close(samples, outputs["head_samples"], atol=ATOL, rtol=0)
        logits = model.autoencoder.decode(outputs["head_samples"][:, :, 0])
        torch.testing.assert_close(logits, outputs["sample_logits"], atol=ATOL, rtol=0)


def test_the_lm_head_draws_the_official_noise_from_the_same_seed(lm, outputs):
    model, _ = lm
    S = outputs["head_noise"].shape[-2]
    torch.manual_seed(123)  # the fixture's seed: our sample() draws U[-0.5, 0.5) noise as the official code does
    with torch.no_grad():
        samples = model.head.sample(outputs["lm_hidden"], S)
    torch.testing.assert_close(samples, outputs["head_samples"], atol=ATOL, rtol=0)


def test_the_tokenizer_gets_pad_appended_and_encodes_as_the_official_one(lm, outputs):
    _, tok = lm
    origin = json.loads((FIXTURE / "origin.json").read_text())
    assert len(tok) == origin["vocab_size"] == 303
    assert (tok.pad_token_id, tok.eos_token_id) == (302, 301)
    assert tok.convert_ids_to_tokens(302) == "[PAD]"
    assert tok(origin["fixture_text"])["input_ids"] == outputs["text_ids"].tolist()


def test_released_layout_generation_continues_the_teacher_forced_states(lm, outputs):
    """No start vector: the KV-cached loop and ``hidden`` put patch t at the same position."""
    model, _ = lm
    ids = outputs["ids"]  # (2, 16): 4 patches
    with torch.no_grad():
        z = model.generate_chunks(ids[:, :8], 1, generator=torch.Generator().manual_seed(7)).latents[:, 0]
        expected = model.head.sample(model.hidden(ids[:, :12])[:, 2], 1, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(z, expected[:, 0], atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------------------------------
# conversion


def test_convert_then_load_gives_bit_identical_weights_and_a_second_conversion_identical_files(tmp_path, lm):
    released, _ = lm
    first = convert(FIXTURE / "calm", tmp_path / "a", tokenizer=TOKENIZER)
    second = convert(FIXTURE / "calm", tmp_path / "b", tokenizer=TOKENIZER)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "converted_from.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    ours, tok = load_pretrained(first, expect="calm")
    assert ours.state_dict().keys() == released.state_dict().keys()
    assert all(torch.equal(v, released.state_dict()[k]) for k, v in ours.state_dict().items())
    assert (ours.config.start_vector, ours.config.head_block, ours.autoencoder.config.linear_bias) == (False, "mlp-glu", True)
    assert len(tok) == 303 and tok.pad_token_id == 302
    record = json.loads((first / "converted_from.json").read_text())
    assert record["kind"] == "calm" and "pytorch_model.bin" in record["files"]


def test_our_loader_names_a_released_directory_and_the_way_to_convert_it():
    with pytest.raises(CheckpointError, match="python -m calm.convert"):
        load_pretrained(FIXTURE / "calm")


def test_convert_cli_writes_once_and_refuses_in_one_line(tmp_path, monkeypatch, capsys):
    """The command writes, then refuses to overwrite in one line (both as ``python -m calm.convert``); the other
    refusals go through the same ``main`` in this process (a command costs a Python start and the imports)."""
    from calm.convert import main

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    run = [sys.executable, "-m", "calm.convert"]
    ok = subprocess.run([*run, str(FIXTURE / "autoencoder"), str(tmp_path / "ae")], capture_output=True, text=True,
                        cwd=ROOT, env=env)
    assert ok.returncode == 0, ok.stderr
    assert "autoencoder checkpoint" in ok.stdout and (tmp_path / "ae" / "model.safetensors").is_file()
    bad = subprocess.run([*run, str(FIXTURE / "autoencoder"), str(tmp_path / "ae")], capture_output=True, text=True,
                         cwd=ROOT, env=env)
    assert bad.returncode == 2, bad.stderr
    assert "--overwrite" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for args, message in [
        ([str(FIXTURE / "calm"), str(tmp_path / "lm")], "pass --tokenizer"),
        (["cccczshao/CALM-M", str(tmp_path / "m")], "pass DIR instead"),
        ([str(tmp_path / "nowhere"), str(tmp_path / "x")], "no such directory"),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1, err


# ----------------------------------------------------------------------------------------------------------
# refusals


class Payload:
    """Unpickling this would run a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_bin_with_a_pickle_payload_is_refused_without_running_it(tmp_path):
    directory = copy_fixture(tmp_path, "autoencoder")
    marker = tmp_path / "ran"
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    save_bin(directory, {**state, "encoder.norm.weight": Payload(marker)})
    with pytest.raises(DamagedFileError, match="refused.*nothing in it was run"):
        load_released(directory)
    assert not marker.exists()


@pytest.mark.parametrize("damage, message", [
    ("rename", "no place in our model"),
    ("drop", "missing tensor"),
    ("shape", "has shape"),
    ("untie", "differs from encoder.embed_tokens.weight"),
])
def test_autoencoder_weights_that_do_not_fit_are_named(tmp_path, damage, message):
    directory = copy_fixture(tmp_path, "autoencoder")
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    if damage == "rename":
        state["encoder.squeeze.weight"] = state.pop("encoder.squeeze_layer.weight")
    elif damage == "drop":
        del state["decoder.expand_layer.bias"]
    elif damage == "shape":
        state["encoder.hidden_to_latent.bias"] = torch.zeros(7)
    else:
        state["decoder.lm_head_weight"] = state["decoder.lm_head_weight"] + 1.0
    save_bin(directory, state)
    with pytest.raises(CheckpointError, match=message):
        load_released(directory)


@pytest.mark.parametrize("edit, message", [
    ({"num_key_value_heads": 2}, "grouped-query attention is not supported"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"patch_size": 2}, "were trained with K=4"),
    ({"vocab_size": 304}, "its autoencoder has 303 ids"),
    ({"hidden_size": 48}, "has shape"),
    ({"eos_token_id": 999}, "eos_token_id 999 is no token"),
])
def test_lm_configs_that_do_not_fit_are_named(tmp_path, edit, message):
    directory = copy_fixture(tmp_path, "calm")
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(CheckpointError, match=message):
        load_released(directory)


def test_a_generative_head_that_is_not_the_mlp_generator_is_refused(tmp_path):
    directory = copy_fixture(tmp_path, "calm")
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    state["generative_head.noise_embd.bias"] = state["generative_head.noise_embd.bias"] + 1.0
    save_bin(directory, state)
    with pytest.raises(CheckpointError, match="generative_head.noise_embd.bias differs"):
        load_released(directory)


def test_a_tokenizer_of_another_vocabulary_is_refused(tmp_path):
    from tokenizers import Tokenizer

    directory = copy_fixture(tmp_path, "autoencoder")
    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.add_special_tokens(["<|extra|>", "<|more|>"])  # 304 ids before [PAD]: not the model's 303
    tok.save(str(directory / "tokenizer.json"))
    with pytest.raises(CheckpointError, match="304 ids but the model's vocab_size is 303"):
        load_released(directory)


def test_a_truncated_bin_is_named_as_damaged(tmp_path):
    directory = copy_fixture(tmp_path, "autoencoder")
    data = (directory / "pytorch_model.bin").read_bytes()
    (directory / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(DamagedFileError, match="pytorch_model.bin"):
        read_released(directory)


# ----------------------------------------------------------------------------------------------------------
# the real sizes


def released_config(hidden: int, ff: int, heads: int) -> dict:
    """A CALM config.json as the official train_energy.sh writes it (its --config_overrides), Llama-3 ids."""
    return {"ae_path": "/path/to/the/autoencoder", "patch_size": 4, "latent_size": 128, "num_mlp_layers": 4,
            "hidden_size": hidden, "intermediate_size": ff, "num_hidden_layers": 16, "num_attention_heads": heads,
            "num_key_value_heads": heads, "noise_size": 64, "num_samples": 8, "beta": 1.0, "vocab_size": 128257,
            "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "rope_scaling": None,
            "attention_bias": False, "mlp_bias": False, "hidden_act": "silu", "pad_token_id": 128256,
            "bos_token_id": 128000, "eos_token_id": 128001}


@pytest.mark.parametrize("hidden, ff, heads, paper", [(1024, 2752, 16, 371e6), (1536, 4096, 24, 735e6),
                                                      (2560, 6880, 32, 1.82e9)])
def test_the_released_sizes_have_the_papers_parameter_counts(hidden, ff, heads, paper):
    from calm.autoencoder import Autoencoder, AutoencoderConfig
    from calm.flops import calm_parameters
    from calm.official_layout import calm_config

    ae = AutoencoderConfig(K=4, latent_dim=128, hidden_size=512, intermediate_size=1280, num_layers=2,
                           vocab_size=128257, linear_bias=True, pad_id=128256)
    config = calm_config(released_config(hidden, ff, heads), ae, "CALM")
    assert calm_parameters(config) == pytest.approx(paper, rel=0.01)  # the paper rounds: 371M, 735M, 1.82B
    if hidden == 1024:  # build CALM-M and the autoencoder on the meta device: the formula is the model
        with torch.device("meta"):
            assert EnergyTransformer(config).num_parameters() == calm_parameters(config)
            assert sum(p.numel() for p in Autoencoder(ae).parameters()) == pytest.approx(75e6, rel=0.02)
