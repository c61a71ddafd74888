"""What the released CALM sizes cost here: parameters, memory, game / passage / token rates, as JSON.

    python bench/official_cost.py [--out PATH]           # default run: 3 min on 2 idle CPU cores, 13 on busy ones
    python bench/official_cost.py --quick                 # smoke run, about 1 min
    python bench/official_cost.py --device cuda           # on a GPU: bf16 weights, timed with cuda.synchronize

Randomly initialised models at the released sizes (``calm.official``; speed does not depend on the weights):
the 75M autoencoder ``cccczshao/CALM-Autoencoder`` (K = 4, l = 128, d = 512, V = 128257) and the 371M energy
transformer ``cccczshao/CALM-M`` (the paper's count, without the frozen autoencoder), its config built from a
released-style config.json with ``calm.official_layout.calm_config``. Measured:

1. parameters, fp32 weight memory, and the process's peak RSS after each stage (``ru_maxrss``);
2. referential game: games/s of the in-process part of one trial, ``experiments.referential_game.play_trial``
   (env reset -> speaker encodes the B targets -> channel -> listener decodes and scores the C candidates ->
   env scores the choice), with the agent core (``agents.CALMAgentCore``, what every Ray agent actor runs)
   serving both roles, per protocol, at the experiment's defaults (L = 16, C = 8, B = 256, n = 32, AWGN
   sigma 0.5). Ray's actor calls and the sweep engine are not included;
3. reconstruction: passages/s of ``experiments.reconstruction._play`` (reset -> encode -> channel -> decode ->
   token metrics and chrF on the detokenised text) at its defaults (L = 32, B = 256) and n = 32 (rho = 1: at rho
   0.25 and 0.5, n = 8 and 16, uncoded-tokens cannot send one 17-bit id of the 128257-id vocabulary);
   a sample of the separation protocol's MCS menu at the size of the oracle's pilot plays (64 passages; no
   autoencoder); the autoencoder's encode-only and decode-only rates (what fitting protocols and analyze_vectors cost),
   and the LM-prior listener (``protocols.prior.lm_prior_decode`` with CALM-M, 32 samples per chunk);
4. CALM-M generation tokens/s (``EnergyTransformer.generate``, temperature 1, KV cache) at batch 1 and 8
   from a 32-token prompt, 64 new tokens, in fp32 and bf16;
5. one forward + backward of CALM-M's training loss on 1 x 512 tokens (no optimiser step), and one training
   step (+ AdamW) of an autoencoder of the released architecture with the tiny preset's sampled softmax, 256
   chunks (what experiments.alignment spends per step on each listener it trains next to a released speaker).

The tokenizer is a synthetic word-level one of the released vocabulary's size (128257 ids, [PAD] = 128256):
detokenising costs about what a BPE's does; passages are random token ids. Figures are medians of the
repeats after a warm-up (with the min and the process CPU time); ``load_avg_1min`` says how busy the shared
machine was: contention from other jobs slowed a run here 2-6x. Prints one JSON object; ``--out`` also writes it,
after every section (a run cut short keeps the sections it finished).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from calm.autoencoder import Autoencoder, AutoencoderConfig  # noqa: E402
from calm.energy_transformer import EnergyTransformer  # noqa: E402
from calm.official_layout import calm_config  # noqa: E402

# the released autoencoder (cccczshao/CALM-Autoencoder) in our config
AE_CONFIG = dict(K=4, latent_dim=128, hidden_size=512, intermediate_size=1280, num_layers=2, vocab_size=128257,
                 linear_bias=True, pad_id=128256)
# the fields of CALM-M's released config.json that calm.official_layout.calm_config reads
CALM_M_JSON = {"model_type": "energy", "patch_size": 4, "latent_size": 128, "vocab_size": 128257, "hidden_size": 1024,
               "num_hidden_layers": 16, "num_attention_heads": 16, "num_key_value_heads": 16,
               "intermediate_size": 2752, "max_position_embeddings": 2048, "noise_size": 64, "num_mlp_layers": 4,
               "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "pad_token_id": 128256}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# (protocol, receiver) cases of the referential game; the grid's receivers are soft and hard
REFERENTIAL_CASES = [("vector", "soft"), ("vector", "hard"), ("quantized", "soft"), ("hash", "soft"),
                     ("uncoded-tokens", "soft"), ("coded", "soft")]
RECONSTRUCTION_PROTOCOLS = ["vector", "uncoded-tokens"]


# ----------------------------------------------------------------------------------------------------------
# helpers


def peak_rss_mb() -> float:
    """The process's peak resident set so far, MB (Linux reports ru_maxrss in KB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2**20 if platform.system() == "Darwin" else 2**10), 1)


def rss_mb() -> float | None:
    """The current resident set, MB (psutil where installed)."""
    try:
        import psutil
    except ImportError:
        return None
    return round(psutil.Process().memory_info().rss / 2**20, 1)


class Timer:
    """Times ``fn`` after warm-ups; synchronises CUDA around every call when the device is cuda."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def __call__(self, fn: Callable[[], object], repeats: int, warmup: int = 1,
                 warm: Callable[[], object] | None = None) -> dict:
        """``{"median_s", "min_s", "times_s", "cpu_s_median"}`` of ``repeats`` calls of ``fn`` after ``warmup``
        calls of ``warm`` (default ``fn``); cpu_s is the process's CPU time (all threads) per call, which a busy
        shared machine inflates less than the wall time."""
        for _ in range(warmup):
            (warm or fn)()
        self.sync()
        times, cpu = [], []
        for _ in range(repeats):
            self.sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            self.sync()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
                "times_s": [round(t, 4) for t in times], "cpu_s_median": round(statistics.median(cpu), 4)}


def per_second(count: int, timing: dict) -> float:
    return round(count / timing["median_s"], 2)


def synthetic_tokenizer(vocab_size: int, pad_id: int):
    """A word-level tokenizer with ``vocab_size`` ids, ``[PAD]`` at ``pad_id`` (the released layout:
    Llama-3's 128256 ids and [PAD] after them) and ``<|end_of_text|>`` at Llama-3's 128001."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    from calm.tokenizer import wrap_tokenizer

    eos_id = min(128001, vocab_size - 2)
    vocab = {f"w{i}": i for i in range(vocab_size)}
    del vocab[f"w{pad_id}"], vocab[f"w{eos_id}"]
    vocab["[PAD]"], vocab["<|end_of_text|>"] = pad_id, eos_id
    backend = Tokenizer(WordLevel(vocab, unk_token="[PAD]"))
    backend.pre_tokenizer = Whitespace()
    return wrap_tokenizer(backend, eot="<|end_of_text|>", pad="[PAD]")


def skipped(exc: BaseException) -> dict:
    return {"skipped": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]}


# ----------------------------------------------------------------------------------------------------------
# sections


def build_models(device: str) -> tuple[Autoencoder, EnergyTransformer, dict]:
    ae_config = AutoencoderConfig(**AE_CONFIG)
    lm_config = calm_config(CALM_M_JSON, ae_config, "bench/official_cost CALM-M")
    torch.manual_seed(0)
    ae = Autoencoder(ae_config).eval()
    lm = EnergyTransformer(lm_config).eval()  # its own autoencoder inside, as a loaded CALM has
    ae_params = sum(p.numel() for p in ae.parameters())
    lm_params = lm.num_parameters()
    lm_total = sum(p.numel() for p in lm.parameters())
    facts = {
        "autoencoder": {"config": ae_config.to_dict(), "parameters": ae_params,
                        "fp32_weights_mb": round(ae_params * 4 / 2**20, 1),
                        "embedding_parameters": ae.embed.weight.numel()},
        "calm_m": {"config": {k: v for k, v in lm_config.to_dict().items() if k != "autoencoder"},
                   "parameters_without_autoencoder": lm_params, "parameters_with_autoencoder": lm_total,
                   "fp32_weights_mb_without_autoencoder": round(lm_params * 4 / 2**20, 1),
                   "fp32_weights_mb_with_autoencoder": round(lm_total * 4 / 2**20, 1),
                   "embedding_parameters": lm.embed.weight.numel()},
    }
    return ae.to(device), lm.to(device), facts


def load_agent(ae: Autoencoder, work: Path, device: str, dtype: str, args) -> dict:
    """The agent core (``agents.CALMAgentCore``, what every Ray agent actor runs) on the autoencoder, saved as a
    checkpoint with the synthetic tokenizer and loaded back; its weights in ``dtype`` on ``device``."""
    from agents.core import CALMAgentCore
    from calm.checkpoint import save_pretrained

    save_pretrained(ae.cpu(), work / "ae", synthetic_tokenizer(ae.config.vocab_size, ae.config.pad_id))
    ae.to(device)
    t0 = time.perf_counter()
    core = CALMAgentCore(str(work / "ae"), {}, threads=args.threads, name="official-cost")
    load_s = time.perf_counter() - t0
    core.model.to(device=device, dtype=DTYPES[dtype])  # the protocols it loads share this module
    return {"core": core, "checkpoint_load_s": round(load_s, 2), "device": str(next(core.model.parameters()).device),
            "dtype": dtype}


def referential(core, ae, passages_16: np.ndarray, work: Path, args, timer: Timer) -> dict:
    """Games/s of one trial's in-process loop, per (protocol, receiver)."""
    from experiments.referential_game import Config, play_trial, protocol_key
    from protocols import load_protocol, make_protocol

    defaults = Config()
    n, B, C = 32, args.games, defaults.candidates
    V = ae.config.vocab_size
    train, test = passages_16[: args.fit_passages], passages_16[args.fit_passages:]
    coded = {"source": defaults.coded_source, "code": defaults.coded_code, "rate": defaults.coded_rate,
             "modulation": defaults.coded_modulation}
    out: dict = {"what": (f"one game = one of the B={B} games of one env step of experiments.referential_game."
                          "play_trial: env.reset draws a target and C-1 uniform distractors, the speaker encodes "
                          "the target (L tokens -> n symbols), AWGN(0.5), the listener decodes the symbols to "
                          "tokens (token accuracy; protocols that send tokens) and scores all C candidates "
                          "(soft: channel likelihood of each candidate's own encoding; hard: nearest in the "
                          "protocol's domain), env.step scores the argmax. Agent calls are in-process "
                          "(no Ray): one CALMAgentCore object is both speaker and listener"),
                 "passage_length": defaults.passage_length, "candidates": C, "games_per_step": B,
                 "channel_uses": n, "sigma": 0.5, "fit_passages": len(train), "cases": {}}
    facts = {}
    for name in dict.fromkeys(p for p, _ in REFERENTIAL_CASES):
        key = protocol_key(name, n)
        try:
            t0 = time.perf_counter()
            p = make_protocol(name, ae, budget=n, quantized_bits=defaults.quantized_bits, coded=coded).fit(train)
            fit_s = time.perf_counter() - t0
            p.save(work / "protocols" / key)
            core.protocols[key] = load_protocol(work / "protocols" / key, autoencoder=core.model)
            facts[key] = {"channel_uses": n, "bits_sent": p.bits_sent(defaults.passage_length),
                          "fit_s": round(fit_s, 3)}
        except (ImportError, ValueError, RuntimeError) as exc:
            facts[key] = skipped(exc)
    settings = {"episodes": B, "batch_size": B, "candidates": C, "distractors": "uniform", "vocab_size": V,
                "facts": facts, "checkpoint": "random-init", "erasure_p": defaults.erasure_p,
                "fading_block": defaults.fading_block}
    warm_settings = {**settings, "episodes": min(B, 16), "batch_size": min(B, 16)}
    for name, receiver in REFERENTIAL_CASES:
        key = protocol_key(name, n)
        case = f"{name}/{receiver}"
        if "skipped" in facts[key]:
            out["cases"][case] = facts[key]
            continue
        spec = {"protocol": name, "receiver": receiver, "channel": "awgn", "channel_uses": n, "sigma": 0.5, "seed": 0}
        repeats = args.repeats if name in ("vector", "quantized") else max(args.repeats, 3)
        timing = timer(lambda spec=spec: play_trial(spec, core, core, test, settings), repeats,
                       warm=lambda spec=spec: play_trial(spec, core, core, test, warm_settings))
        out["cases"][case] = {"games_per_s": per_second(B, timing), **timing,
                              "protocol_fit_s_on_fit_passages": facts[key]["fit_s"]}
        print(f"[official_cost] referential {case}: {out['cases'][case]['games_per_s']} games/s", file=sys.stderr,
              flush=True)
    return out


def reconstruction(core, ae, passages_32: np.ndarray, tokenizer_path: str, work: Path, args, timer: Timer) -> dict:
    """Passages/s of one reconstruction trial's in-process loop (vector, uncoded-tokens), and the bare
    autoencoder's encode-only and decode-only rates."""
    from experiments.common.sweep import make_channel
    from experiments.reconstruction import Config, _play
    from protocols import load_protocol, make_protocol
    from protocols.latent import decode_latents, encode_means
    from protocols.token import UncodedTokenProtocol, UncodedTokenProtocolConfig

    defaults = Config()
    L, B = defaults.passage_length, args.passages
    n = L  # rho = 1: uncoded-tokens needs n >= 17 to carry one id of the 128257-id vocabulary
    train, test = passages_32[: args.fit_passages], passages_32[args.fit_passages:]
    out: dict = {"what": (f"one passage = one of the B={B} passages of one env step of experiments.reconstruction._play: "
                          "env.reset draws L-token targets, the speaker encodes (L tokens -> n symbols), AWGN(0.5), "
                          "the listener decodes to L token ids (vector: least squares, PCA inverse, the autoencoder's "
                          "decoder, argmax over the 128257-id vocabulary), then token accuracy, chunk/passage exact "
                          "match and sacrebleu chrF of the detokenised texts; in-process agent calls"),
                 "passage_length": L, "passages_per_step": B, "channel_uses": n, "rho": n / L, "sigma": 0.5,
                 "protocols": {}}
    channel = make_channel("awgn", 0.5)
    settings = {"batch_size": B, "vocab_size": ae.config.vocab_size, "tokenizer_path": tokenizer_path,
                "K": ae.config.K, "guess": 0}
    for name in RECONSTRUCTION_PROTOCOLS:
        key = f"{name}@{n}"
        if name == "uncoded-tokens":
            p = UncodedTokenProtocol(UncodedTokenProtocolConfig(vocab_size=ae.config.vocab_size, budget=n, fill_id=0))
        else:
            p = make_protocol(name, ae, budget=n)
        p.fit(train).save(work / "protocols" / key)
        core.protocols[key] = load_protocol(work / "protocols" / key, autoencoder=core.model)
        spec = {"protocol": name, "channel": "awgn", "channel_uses": n, "sigma": 0.5, "seed": 0}
        timing = timer(lambda key=key, spec=spec: _play(key, spec, core, core, test, channel, settings, episodes=B),
                       args.repeats if name == "vector" else max(args.repeats, 3),
                       warm=lambda key=key, spec=spec: _play(key, spec, core, core, test, channel, settings,
                                                             episodes=min(B, 16)))
        out["protocols"][name] = {"passages_per_s": per_second(B, timing), **timing}
        print(f"[official_cost] reconstruction {name}: {out['protocols'][name]['passages_per_s']} passages/s",
              file=sys.stderr, flush=True)
    out["separation"] = separation(core, ae, train, test, n, settings, channel, defaults, args, timer)
    # the autoencoder alone, at the protocols' batch: encoder means (fitting, analyze_vectors) and argmax decoding
    model = core.model
    ids = test[:B]
    enc = timer(lambda: encode_means(model, ids, batch_size=1024), max(args.repeats, 3))
    mu = encode_means(model, ids, batch_size=1024)
    dec = timer(lambda: decode_latents(model, mu), args.repeats, warm=lambda: decode_latents(model, mu[:16]))
    out["autoencoder_only"] = {
        "what": f"{B} passages of L={L}: encode = posterior means (encode_means, batch 1024); decode = argmax tokens "
                "of given latents (decode_latents, chunked to 2^25 logits)",
        "encode_passages_per_s": per_second(B, enc), "encode_tokens_per_s": per_second(B * L, enc), "encode": enc,
        "decode_passages_per_s": per_second(B, dec), "decode_tokens_per_s": per_second(B * L, dec), "decode": dec}
    return out


def separation(core, ae, train, test, n, settings, channel, defaults, args, timer: Timer) -> dict:
    """Passages/s of a sample of the separation protocol's MCS menu (no autoencoder: bigram range coding ->
    Sionna 5G LDPC / Polar -> PAM) at the pilot plays' size: a reconstruction, alignment, relay or broadcast trial
    plays every MCS of the menu on ``pilot_passages`` passages before the trial's own passages."""
    from experiments.reconstruction import _play
    from protocols.separation import SeparationProtocol, TokenSourceModel, load_bank, mcs_menu, save_bank

    V, pilot = ae.config.vocab_size, min(defaults.pilot_passages, args.passages)
    try:
        menu = [c for code in defaults.separation_codes
                for c in mcs_menu(n, vocab_size=V, source_model=defaults.source_model, code=code)]
        source = TokenSourceModel(V, defaults.source_model).fit(train)
        sample = menu[:: max(1, len(menu) // 4)]
        directory = Path(core.checkpoint).parent / "protocols" / f"separation@{n}"  # the work directory
        save_bank([SeparationProtocol(c, source=source).fit(train) for c in sample], directory)
    except (ImportError, ValueError) as exc:
        return skipped(exc)
    spec = {"protocol": "separation", "channel": "awgn", "channel_uses": n, "sigma": 0.5, "seed": 0}
    out: dict = {"what": (f"one passage of a pilot play (experiments.reconstruction._play, text=False): {pilot} "
                          "passages per MCS, random token ids (a bigram fitted on them spends about 17 bits per "
                          "id)"), "menu_size": len(menu), "pilot_passages": defaults.pilot_passages, "mcs": {}}
    for name, protocol in load_bank(directory).items():
        key = f"separation@{n}#{name}"
        core.protocols[key] = protocol
        timing = timer(lambda key=key: _play(key, spec, core, core, test, channel, settings, episodes=pilot,
                                             text=False), 1, warmup=0)
        out["mcs"][name] = {"passages_per_s": per_second(pilot, timing), **timing}
    rates = [v["passages_per_s"] for v in out["mcs"].values()]
    out["mean_passages_per_s"] = round(float(np.mean(rates)), 2)
    out["harmonic_mean_passages_per_s"] = round(len(rates) / float(np.sum(1.0 / np.array(rates))), 2)
    print(f"[official_cost] separation: {out['harmonic_mean_passages_per_s']} passages/s per MCS", file=sys.stderr,
          flush=True)
    return out


def lm_prior(lm: EnergyTransformer, passages_32: np.ndarray, args, timer: Timer) -> dict:
    """Passages/s of the LM-prior listener (vector-prior) with CALM-M as the prior."""
    from experiments.common.sweep import make_channel
    from experiments.reconstruction import Config
    from protocols.prior import lm_prior_decode
    from protocols.vector import VectorProtocol, VectorProtocolConfig

    defaults = Config()
    L, n, B = defaults.passage_length, int(round(0.5 * defaults.passage_length)), args.prior_passages
    train, test = passages_32[: args.fit_passages], passages_32[args.fit_passages:args.fit_passages + B]
    protocol = VectorProtocol(lm.autoencoder, VectorProtocolConfig(budget=n)).fit(train)
    channel = make_channel("awgn", 0.5)
    symbols = channel(protocol.encode(test), np.random.default_rng(0))
    timing = timer(lambda: lm_prior_decode(protocol, lm, symbols, channel, None, samples=defaults.prior_samples,
                                           weight=defaults.prior_weight, rule="map", seed=0),
                   args.repeats, warm=lambda: lm_prior_decode(protocol, lm, symbols[:1], channel, None,
                                                              samples=defaults.prior_samples, seed=0))
    print(f"[official_cost] LM-prior listener: {per_second(B, timing)} passages/s", file=sys.stderr, flush=True)
    return {"what": (f"protocols.prior.lm_prior_decode (vector-prior, rule map) of {B} passages of L={L} sent with the "
                     f"vector protocol at n={n}, AWGN(0.5): per chunk CALM-M re-reads the decoded prefix (no KV cache), "
                     f"draws {defaults.prior_samples} head samples, decodes them (full-vocabulary logits) and "
                     "re-encodes them"), "passages": B, "samples_per_chunk": defaults.prior_samples,
            "passages_per_s": per_second(B, timing), **timing}


def generation(lm: EnergyTransformer, device: str, dtypes: list[str], args, timer: Timer) -> dict:
    """CALM-M tokens/s at batch 1 and 8, temperature 1, 32-token prompt, 64 new tokens."""
    out: dict = {"what": f"EnergyTransformer.generate(prompt (B, 32), {args.new_tokens}), temperature 1, KV cache; "
                         "tokens/s = B * new tokens / wall time (the prompt's prefill included)",
                 "prompt_tokens": 32, "new_tokens": args.new_tokens}
    rng = np.random.default_rng(0)
    prompts = torch.as_tensor(rng.integers(0, 128000, size=(max(args.gen_batches), 32)), device=device)
    for name in dtypes:
        try:
            lm.to(DTYPES[name])
            for B in args.gen_batches:
                gen = torch.Generator(device=device).manual_seed(0)
                timing = timer(lambda B=B, gen=gen: lm.generate(prompts[:B], args.new_tokens, generator=gen),
                               args.gen_repeats, warm=lambda B=B, gen=gen: lm.generate(prompts[:B], 8, generator=gen))
                out[f"{name}_batch_{B}"] = {"tokens_per_s": per_second(B * args.new_tokens, timing), **timing}
                print(f"[official_cost] generation {name} batch {B}: {out[f'{name}_batch_{B}']['tokens_per_s']} "
                      "tokens/s", file=sys.stderr, flush=True)
        except (RuntimeError, TypeError) as exc:
            out[name] = skipped(exc)
        finally:
            lm.to(torch.float32)
    return out


def train_step(lm: EnergyTransformer, device: str, dtype: str, args, timer: Timer) -> dict:
    """One forward + backward of CALM-M's energy loss on 1 x 512 tokens (fp32 weights; bf16 autocast on request)."""
    ids = torch.as_tensor(np.random.default_rng(1).integers(0, 128000, size=(1, 512)), device=device)
    lm.train()
    autocast = dtype == "bf16"

    def step() -> None:
        with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                            enabled=autocast):
            loss = lm(ids, generator=torch.Generator(device=device).manual_seed(0)).loss
        loss.backward()
        lm.zero_grad(set_to_none=True)

    try:
        timing = timer(step, args.train_repeats)
    finally:
        lm.eval()
    return {"what": "CalmTask's loss (EnergyTransformer.forward: frozen encoder, backbone, 8 head samples, 100 "
                    "posterior samples) + backward on 1 x 512 tokens (128 patches); no optimiser step",
            "autocast_bf16": autocast, "tokens": 512, "tokens_per_s": per_second(512, timing), **timing}


def ae_train_step(device: str, args, timer: Timer) -> dict:
    """One optimiser step of an autoencoder of the released architecture with the ``tiny`` preset's training
    knobs (sampled softmax over 1024 negatives): what training another listener costs (experiments.alignment's
    seed / latent / tokenizer listeners next to a released speaker copy its architecture, train ae_steps steps)."""
    from calm.autoencoder import AutoencoderTask
    from calm.autoencoder import preset as ae_preset
    from experiments.alignment_agents import ARCHITECTURE

    config = ae_preset("tiny", **{k: v for k, v in AE_CONFIG.items() if k in ARCHITECTURE},
                       vocab_size=AE_CONFIG["vocab_size"], pad_id=AE_CONFIG["pad_id"])
    task = AutoencoderTask(config)
    model = task.build_model().to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    batch = torch.as_tensor(np.random.default_rng(2).integers(0, 128000, size=(args.ae_batch, config.K)),
                            device=device)
    generator = torch.Generator(device=device).manual_seed(0)

    def step() -> None:
        loss, _ = task.loss(model, batch, generator)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    timing = timer(step, args.train_repeats)
    return {"what": (f"AutoencoderTask loss (train mode: z sampled, latent dropout, sampled softmax over "
                     f"{config.train_negatives} negatives) + backward + AdamW step on {args.ae_batch} chunks of "
                     f"K={config.K} tokens (experiments' ae_batch_size), released architecture, tiny-preset "
                     "training knobs, fp32"), "chunks": args.ae_batch, "train_negatives": config.train_negatives,
            "steps_per_s": round(1 / timing["median_s"], 3), **timing}


# ----------------------------------------------------------------------------------------------------------
# main


def section(name: str, run: Callable[[], dict]) -> dict:
    """``run()``, or what stopped it: a machine without one of a section's packages (the device image may lack
    pettingzoo, Sionna or sacrebleu) still reports the other sections."""
    try:
        return run()
    except Exception as exc:  # recorded in the JSON, and the other sections still run
        import traceback

        traceback.print_exc()
        print(f"[official_cost] {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return {"failed": f"{type(exc).__name__}: {exc}"[:500]}


def build_parser() -> argparse.ArgumentParser:
    """The command line (scripts/gpu_check.sh's step 5 is checked against it by tests/test_gpu_check.py)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small batches, one repeat (about 2 min)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (cuda when torch sees one)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                        help="weights of the games and passages, and autocast of the training step (auto: bf16 on "
                             "cuda, fp32 on cpu); generation runs fp32 and bf16 either way")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats of the autoencoder-heavy cases")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["referential", "reconstruction", "prior", "generation", "train", "ae-train"],
                        help="sections left out")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    return parser


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: torch {torch.__version__} sees no CUDA device")
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if device.startswith("cuda") else "fp32")
    torch.set_num_threads(args.threads)
    quick = args.quick
    args.games = 32 if quick else 256  # the referential game's batch_size
    args.passages = 32 if quick else 256  # reconstruction's batch_size
    args.prior_passages = 2 if quick else 8
    args.fit_passages = 256 if quick else 1024
    args.repeats = args.repeats or (1 if quick else 3)
    args.gen_repeats = 1 if quick else 3
    args.train_repeats = 1 if quick else 3
    args.gen_batches = [1, 8]
    args.ae_batch = 32 if quick else 256
    args.new_tokens = 16 if quick else 64
    timer = Timer(device)
    report: dict = {"bench": "official_cost", "quick": quick, "device": device, "dtype": dtype,
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "load_avg_1min_before": round(os.getloadavg()[0], 2),
                    "cuda_device": torch.cuda.get_device_name(0) if device.startswith("cuda") else None}
    rss: dict = {"start": peak_rss_mb()}
    t_start = time.perf_counter()

    def save() -> None:  # after every section, so that a run cut short by a time limit keeps what it measured
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({**report, "peak_rss_mb": rss}, indent=1) + "\n")

    ae, lm, facts = build_models(device)
    report["parameters"] = facts
    rss["after_building_models"] = peak_rss_mb()
    rng = np.random.default_rng(0)
    # random token ids below Llama-3's special ids; the fit passages first, then the played ones
    passages_16 = rng.integers(0, 128000, size=(args.fit_passages + 2000, 16))
    passages_32 = rng.integers(0, 128000, size=(args.fit_passages + 2000, 32))

    with tempfile.TemporaryDirectory(prefix="official-cost-") as tmp:
        games = [name for name in ("referential", "reconstruction") if name not in args.skip]
        agent = section("agent", lambda: load_agent(ae, Path(tmp), device, dtype, args)) if games else {}
        if "failed" in agent:
            report["agent"] = agent
        elif games:
            core = agent.pop("core")
            report["agent"] = agent
            rss["after_agent_load"] = peak_rss_mb()
            tokenizer_path = str(Path(tmp) / "ae" / "tokenizer.json")
            run = {"referential": lambda: referential(core, core.model, passages_16, Path(tmp), args, timer),
                   "reconstruction": lambda: reconstruction(core, core.model, passages_32, tokenizer_path, Path(tmp),
                                                            args, timer)}
            for name in games:
                report[name] = section(name, run[name])
                rss[f"after_{name}"] = peak_rss_mb()
                save()
            core = run = None  # frees the agent's autoencoder
    ae = None

    def prior() -> dict:
        lm.to(DTYPES[dtype])
        try:
            return lm_prior(lm, passages_32, args, timer)
        finally:
            lm.to(torch.float32)

    sections = {"prior": ("lm_prior_listener", prior),
                "generation": ("generation", lambda: generation(lm, device, ["fp32", "bf16"], args, timer)),
                "train": ("train_step", lambda: train_step(lm, device, dtype, args, timer)),
                "ae-train": ("ae_train_step", lambda: ae_train_step(device, args, timer))}
    for name, (field, run) in sections.items():
        if name not in args.skip:
            report[field] = section(name, run)
            rss[f"after_{field}"] = peak_rss_mb()
            save()
    report["peak_rss_mb"] = rss
    report["rss_now_mb"] = rss_mb()
    if device.startswith("cuda"):
        report["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    report["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    save()
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
