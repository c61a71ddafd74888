"""protocols.jscc_train on Ray Train: the jscc task trains on 2 CPU workers through calm.train's CLI around a frozen
CALM autoencoder, checkpoints, and exports an adapter that loads and fits as a protocol.

Only this run needs Ray (``make test`` runs it in a Ray process); the trained adapter, the protocol, the in-process
training and resume are tests/test_jscc.py's, which needs none. The run's autoencoder is trained here for a few
steps on a small slice of the default corpus, under a 512-id byte-level BPE trained on the same slice: the run
carries its weights frozen, whatever they are.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from calm.autoencoder import AutoencoderConfig
from calm.checkpoint import load_pretrained, save_pretrained
from calm.train import train_autoencoder
from environments.channels import AWGN
from protocols.jscc import JSCCProtocol
from protocols.jscc_model import JSCCModel

pytestmark = pytest.mark.ray  # the Ray Train run joins the test process's shared Ray

V, L = 512, 16  # tokenizer (and autoencoder) vocabulary; tokens per passage
TEXT_CHARS = 150_000


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    """``(ae_dir, autoencoder, text, train)``: a tiny autoencoder (test_jscc's shape) saved with its tokenizer, the
    corpus file the run reads, and that text as one token stream."""
    from tokenizers import ByteLevelBPETokenizer

    from calm.data import load_split
    from calm.tokenizer import EOT_TOKEN, PAD_TOKEN, load_tokenizer

    texts, total = [], 0
    for doc in load_split("kjv+shakespeare", "train")[::3]:  # every third document: both sources
        texts.append(doc.text[:30_000])
        total += len(texts[-1])
        if total >= TEXT_CHARS:
            break
    root = tmp_path_factory.mktemp("jscc-ray")
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=V, min_frequency=2, special_tokens=[PAD_TOKEN, EOT_TOKEN],
                            show_progress=False)
    bpe.save(str(root / "tokenizer.json"))
    tok = load_tokenizer(root)
    assert len(tok) == V
    eot = int(tok.eos_token_id)
    train = np.concatenate([np.append(enc.ids, eot) for enc in tok.backend_tokenizer.encode_batch(texts)]).astype(
        np.int32)
    config = AutoencoderConfig(K=4, latent_dim=32, hidden_size=64, intermediate_size=128, num_layers=2,
                               vocab_size=V, token_dropout=0.0, embed_init_std=1.0)
    ae = train_autoencoder(config, train, steps=20, batch_size=64, lr=1e-2, warmup=4)
    save_pretrained(ae, root / "ae", tok)
    text = root / "corpus.txt"
    text.write_text("\n\n".join(texts))
    return root / "ae", ae, text, train


@pytest.mark.slow
def test_ray_cli_trains_and_checkpoints(frozen, tmp_path, monkeypatch, ray_session):
    """The run joins the test process's shared local Ray (tests/conftest.py), as a run joins a cluster."""
    from calm.train import newest_checkpoint
    from protocols.jscc_train import main

    ae_dir, autoencoder, text, train = frozen
    monkeypatch.setenv("LATENTCOMM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    common = ["--ae", str(ae_dir), "--corpus", f"text:{text}", "--tokenizer", str(ae_dir / "tokenizer.json"),
              "--out", str(out), "--workers", "2", "--gpu", "off", "--no-progress", "--threads", "1",
              "--passage-length", str(L), "--channel-uses", "8", "--hidden-size", "32", "--batch-size", "8",
              "--checkpoint-every", "2", "--val-every", "2", "--val-size", "64", "--warmup", "1"]
    result = main(common + ["--steps", "4"])
    assert result.step == 4 and [h["step"] for h in result.history] == [2, 4]
    state = json.loads((newest_checkpoint(out / "ray") / "train_state.json").read_text())
    assert state["task"] == "jscc" and state["step"] == 4 and state["world_size"] == 2
    model, tok = load_pretrained(out)
    assert isinstance(model, JSCCModel) and model.config.channel_uses == 8 and len(tok) == V
    for k, v in autoencoder.state_dict().items():
        assert torch.equal(model.autoencoder.state_dict()[k], v), k
    passages = train[: len(train) // L * L].reshape(-1, L).astype(np.int64)
    proto = JSCCProtocol.from_pretrained(out, autoencoder=autoencoder).fit(passages[:2000])
    assert proto.with_channel(AWGN(10.0 ** (-10.0 / 20.0))).encode(passages[-4:]).shape == (4, 8)
