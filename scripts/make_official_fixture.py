"""Make the test fixture of the released-CALM loader (tests/fixtures/official_calm) with the OFFICIAL code.

The fixture is data: tiny randomly initialised models saved in the released layout by the official CALM code
(github.com/shaochenze/calm, commit c556310, ``models/``), a tokenizer in the released layout, fixed inputs
and the official code's outputs on them. ``tests/test_official.py`` loads the models through
``calm.official`` and checks that our Autoencoder / EnergyTransformer give the same outputs.

Run it in a virtual environment with the official code's own pins (not the project's), from the project root:

    python3 -m venv /tmp/offvenv
    /tmp/offvenv/bin/pip install torch==2.13.0 transformers==4.43.0 tokenizers==0.19.1 safetensors==0.5.3
    git clone https://github.com/shaochenze/calm /tmp/calm && git -C /tmp/calm checkout c556310
    /tmp/offvenv/bin/python scripts/make_official_fixture.py --calm-repo /tmp/calm --out tests/fixtures/official_calm

What it writes (all small: vocabulary 303, width 32):

    tokenizer/        tokenizer.json (byte-level BPE trained here on the official repo's WikiText test file,
                      Llama-3's special tokens <|begin_of_text|> / <|end_of_text|> after the ordinary ids, a
                      BOS post-processor), tokenizer_config.json, special_tokens_map.json; no [PAD]: the
                      official training script adds it (id 302), as it does to the Llama-3 tokenizer
    autoencoder/      the official Autoencoder: config.json + pytorch_model.bin (the training scripts'
                      --save_safetensors False) + the tokenizer files
    autoencoder_st/   the same weights as save_pretrained's default model.safetensors (the tied
                      lm_head_weight absent)
    calm/             the official EnergyTransformer (with the autoencoder inside): config.json with ae_path
                      set to a path on no machine, as in the released config, + pytorch_model.bin
    outputs.safetensors  ids (2, 16); ae_latent (2, 4, 32) = encoder output [mean | log-std]; ae_logits
                      (2, 16, 303) = decoder(mean); lm_hidden (2, 4, 32) = transformer(embed_proj(patches));
                      head_noise (2, 4, 3, 8) and head_samples (2, 4, 3, 16) = MLPGenerator.sample after
                      torch.manual_seed(123) (the noise the official sample() draws, recorded with the same seed);
                      text_ids = the tokenizer (with [PAD] added) on FIXTURE_TEXT
    origin.json       commit, library versions, seeds and sizes

Every parameter is drawn from N(0, 0.2^2) after construction (biases and norm weights included), so that a
bias or norm that a loader dropped or misplaced changes the outputs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

COMMIT = "c556310"
FIXTURE_TEXT = "Robert Boulter is an English film, television and theatre actor."
VOCAB_ORDINARY = 300  # ordinary ids; then <|begin_of_text|>, <|end_of_text|>, and [PAD] added by the trainer


def build_tokenizer(calm_repo: Path, out: Path) -> None:
    from tokenizers import ByteLevelBPETokenizer, Tokenizer, processors

    docs = [json.loads(line)["text"] for line in (calm_repo / "data/wikitext_document_level-test.json").open()][:200]
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(docs, vocab_size=VOCAB_ORDINARY, min_frequency=2, show_progress=False)
    tok = Tokenizer.from_str(bpe.to_str())
    assert tok.get_vocab_size() == VOCAB_ORDINARY, tok.get_vocab_size()
    tok.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>"])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}, indent=2) + "\n")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "clean_up_tokenization_spaces": True,
         "model_max_length": 1000000, "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2) + "\n")


def perturb(model, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calm-repo", type=Path, required=True, help="a checkout of shaochenze/calm at " + COMMIT)
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/official_calm"))
    args = parser.parse_args()
    head = subprocess.run(["git", "-C", str(args.calm_repo), "rev-parse", "HEAD"], capture_output=True, text=True)
    if not head.stdout.startswith(COMMIT):
        sys.exit(f"{args.calm_repo} is at {head.stdout.strip() or '?'}, not {COMMIT}")
    sys.path.insert(0, str(args.calm_repo))

    import safetensors
    import tokenizers
    import torch
    import transformers
    from models.configuration_autoencoder import AutoencoderConfig
    from models.configuration_calm import CALMConfig
    from models.modeling_autoencoder import Autoencoder
    from models.modeling_energy import EnergyTransformer
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    out = args.out
    if out.exists():
        shutil.rmtree(out)
    build_tokenizer(args.calm_repo, out / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    tokenizer.add_special_tokens(dict(pad_token="[PAD]"))  # what train/train_calm.py does
    V = len(tokenizer)
    specials = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                    eos_token_id=tokenizer.eos_token_id)

    torch.manual_seed(0)
    ae_config = AutoencoderConfig(vocab_size=V, hidden_size=32, intermediate_size=48, num_encoder_layers=2,
                                  num_decoder_layers=2, latent_size=16, patch_size=4, **specials)
    ae = Autoencoder(ae_config)
    perturb(ae, 1)
    ae.eval()
    ae.save_pretrained(out / "autoencoder", safe_serialization=False)
    ae.save_pretrained(out / "autoencoder_st", safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(out / "tokenizer" / name, out / "autoencoder" / name)

    lm_config = CALMConfig(ae_path=str(out / "autoencoder"), vocab_size=V, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, latent_size=16,
                           patch_size=4, num_mlp_layers=2, noise_size=8, max_position_embeddings=64, **specials)
    torch.manual_seed(0)
    lm = EnergyTransformer(lm_config)
    perturb(lm.transformer, 2)
    perturb(lm.embed_proj, 3)
    perturb(lm.mlp_generator, 4)  # generative_head is the same module
    lm.eval()
    lm.save_pretrained(out / "calm", safe_serialization=False)
    config_path = out / "calm" / "config.json"
    config = json.loads(config_path.read_text())
    config["ae_path"] = "/path/to/the/autoencoder"  # the released config points at the authors' machine
    config_path.write_text(json.dumps(config, indent=2) + "\n")

    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB_ORDINARY, (2, 16), generator=gen)
    B, L = ids.shape
    N = L // 4
    with torch.no_grad():
        ae_latent = ae.encoder(input_ids=ids)  # (B, N, 2l)
        mean = ae_latent[..., :16]
        ae_logits = ae.decoder(latent_states=mean)  # (B, L, V)
        embeds = lm.embed_proj(lm.transformer.embed_tokens(ids).reshape(B, N, -1))
        lm_hidden = lm.transformer(inputs_embeds=embeds)[0]  # (B, N, d)
        S = 3
        repeated = lm_hidden.unsqueeze(2).repeat(1, 1, S, 1)  # (B, N, S, d)
        torch.manual_seed(123)
        noise = torch.rand((*repeated.shape[:-1], lm_config.noise_size)) - 0.5  # what sample() draws first
        torch.manual_seed(123)
        samples = lm.mlp_generator.sample(repeated)  # (B, N, S, l)
        # the LM's own autoencoder decodes its samples: the released decoder path inside the LM
        sample_logits = lm.ae_model.decoder(latent_states=samples[:, :, 0])  # (B, N*K, V)
    text_ids = torch.tensor(tokenizer(FIXTURE_TEXT)["input_ids"])
    save_file({"ids": ids, "ae_latent": ae_latent.contiguous(), "ae_logits": ae_logits.contiguous(),
               "lm_hidden": lm_hidden.contiguous(), "head_noise": noise, "head_samples": samples.contiguous(),
               "sample_logits": sample_logits.contiguous(), "text_ids": text_ids},
              str(out / "outputs.safetensors"))
    (out / "origin.json").write_text(json.dumps({
        "made_by": "scripts/make_official_fixture.py", "official_code": f"github.com/shaochenze/calm@{COMMIT}",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__},
        "vocab_size": V, "specials": specials, "fixture_text": FIXTURE_TEXT, "head_seed": 123,
        "head_samples_per_position": S, "parameter_std": 0.2}, indent=2) + "\n")
    print(f"wrote {out} (vocabulary {V})")


if __name__ == "__main__":
    main()
