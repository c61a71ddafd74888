"""calm.checkpoint: bit-identical round trip, clear errors for mismatched or damaged checkpoints."""

import json

import pytest
import torch
from tokenizers import ByteLevelBPETokenizer

from calm.autoencoder import Autoencoder, AutoencoderConfig
from calm.checkpoint import CheckpointError, load_optimizer, load_pretrained, save_optimizer, save_pretrained
from calm.files import DamagedFileError
from calm.tokenizer import load_tokenizer

TEXT = ("In the beginning God created the heaven and the earth. And the earth was without form, and void; "
        "and darkness was upon the face of the deep. To be, or not to be, that is the question: whether "
        "'tis nobler in the mind to suffer the slings and arrows of outrageous fortune. ") * 4


def make_tokenizer(directory, text=TEXT, size=300):
    """A small byte-level BPE with the bpe:* special ids (pad 0, end-of-text 1), trained in memory."""
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator([text], vocab_size=size, min_frequency=1,
                            special_tokens=["<|pad|>", "<|endoftext|>"], show_progress=False)
    directory.mkdir(parents=True, exist_ok=True)
    bpe.save(str(directory / "tokenizer.json"))
    return load_tokenizer(directory)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    a = make_tokenizer(root / "a")
    b = make_tokenizer(root / "b", text=TEXT.upper())  # same size, other merges
    return a, b


def make_model(tok, seed=0, **overrides):
    torch.manual_seed(seed)
    config = AutoencoderConfig(**{**dict(K=4, latent_dim=8, hidden_size=16, intermediate_size=32,
                                         vocab_size=len(tok)), **overrides})
    return Autoencoder(config)


def test_round_trip_is_bit_identical(tmp_path, tokenizers):
    tok, _ = tokenizers
    model = make_model(tok)
    save_pretrained(model, tmp_path / "ck", tok)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors",
                                                                   "tokenizer.json"]
    loaded, loaded_tok = load_pretrained(tmp_path / "ck")
    assert loaded.config == model.config
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    assert loaded_tok.encode("the earth") == tok.encode("the earth")
    ids = torch.randint(0, len(tok), (3, 8))
    model.eval()
    assert torch.equal(model.decode(model.encode(ids)[0]), loaded.decode(loaded.encode(ids)[0]))
    # saving the loaded model again writes the same bytes
    save_pretrained(loaded, tmp_path / "ck2", loaded_tok)
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "ck" / name).read_bytes() == (tmp_path / "ck2" / name).read_bytes(), name
    meta = json.loads((tmp_path / "ck" / "config.json").read_text())
    assert meta["model_type"] == "autoencoder" and meta["config"]["K"] == 4


def test_mismatched_tokenizer_is_refused(tmp_path, tokenizers):
    tok, other = tokenizers
    assert len(tok) == len(other)
    save_pretrained(make_model(tok), tmp_path / "ck", tok)
    with pytest.raises(CheckpointError, match="tokenizer passed in does not match.*fingerprint"):
        load_pretrained(tmp_path / "ck", tokenizer=other)
    # a swapped tokenizer.json is caught too
    (tmp_path / "ck" / "tokenizer.json").write_text(other.backend_tokenizer.to_str())
    with pytest.raises(CheckpointError, match="tokenizer.json does not match"):
        load_pretrained(tmp_path / "ck")
    # and saving with a tokenizer of another size than the model's vocabulary
    small = make_tokenizer(tmp_path / "small", size=280)
    with pytest.raises(CheckpointError, match="280 ids but the model's vocab_size is 300"):
        save_pretrained(make_model(tok), tmp_path / "ck3", small)


def test_config_that_does_not_fit_the_weights_says_what_differs(tmp_path, tokenizers):
    tok, _ = tokenizers
    save_pretrained(make_model(tok), tmp_path / "ck", tok)
    path = tmp_path / "ck" / "config.json"
    meta = json.loads(path.read_text())
    meta["config"]["K"] = 2
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="trained with K=4"):
        load_pretrained(tmp_path / "ck")
    meta["config"]["K"] = 4
    meta["config"]["vocab_size"] = 280
    path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="300 ids but config vocab_size is 280"):
        load_pretrained(tmp_path / "ck")


def test_missing_truncated_and_foreign_files_are_clear_errors(tmp_path, tokenizers):
    tok, _ = tokenizers
    ck = tmp_path / "ck"
    with pytest.raises(CheckpointError, match="does not exist"):
        load_pretrained(ck)
    save_pretrained(make_model(tok), ck, tok)
    weights = ck / "model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    with pytest.raises(DamagedFileError, match="damaged or truncated"):
        load_pretrained(ck)
    weights.write_bytes(good[:5])
    with pytest.raises(DamagedFileError, match="not a safetensors file"):
        load_pretrained(ck)
    # a zip/pickle file (what torch.save writes) is never unpickled
    weights.write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    with pytest.raises(DamagedFileError, match="not a safetensors file"):
        load_pretrained(ck)
    weights.unlink()
    with pytest.raises(DamagedFileError, match="model.safetensors: the file is missing"):
        load_pretrained(ck)
    (ck / "config.json").write_text("{not json")
    with pytest.raises(DamagedFileError, match="not valid JSON"):
        load_pretrained(ck)


def test_optimizer_state_round_trip(tmp_path, tokenizers):
    tok, _ = tokenizers
    model = make_model(tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, len(tok), (4, 8))
    for _ in range(2):
        opt.zero_grad()
        model(ids, generator=torch.Generator().manual_seed(0)).loss.backward()
        opt.step()
    save_optimizer(opt, model, tmp_path / "opt.safetensors")
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3)
    load_optimizer(fresh, model, tmp_path / "opt.safetensors")
    for p in model.parameters():
        for key, value in opt.state[p].items():
            assert torch.equal(fresh.state[p][key], value), key


@pytest.mark.parametrize("kind", ["autoencoder", "baseline", "calm"])
def test_model_configs_round_trip_and_refuse_unknown_fields(kind):
    """Every model config survives to_dict -> JSON -> from_dict and names a field it does not know."""
    from calm.autoencoder import preset as ae_preset
    from calm.baseline import BaselineConfig
    from calm.baseline import preset as baseline_preset
    from calm.energy_transformer import EnergyTransformerConfig
    from calm.energy_transformer import preset as calm_preset

    ae = ae_preset("tiny", vocab_size=64, latent_dim=16)
    config = {"autoencoder": ae, "baseline": baseline_preset("tiny", 64), "calm": calm_preset("tiny", ae)}[kind]
    cls = {"autoencoder": AutoencoderConfig, "baseline": BaselineConfig, "calm": EnergyTransformerConfig}[kind]
    values = json.loads(json.dumps(config.to_dict()))
    assert cls.from_dict(values) == config
    with pytest.raises(ValueError, match=rf"{cls.__name__}: unknown fields \['not_a_field'\]"):
        cls.from_dict({**values, "not_a_field": 1})
