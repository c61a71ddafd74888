"""Steering in CALM space vs token-level steering: how often an attribute moves, and what it costs.

    python -m experiments.steering                     # the K = 2 CALM, autoencoder and token baseline (cached)
    python -m experiments.steering --attributes source question --prompts 128
    python -m experiments.steering --help

For each attribute (``experiments.steering_methods.ATTRIBUTES``: source Shakespeare -> KJV; outside KJV
you/your -> thee/thou/thy, no question -> question, no speech prefix -> speech prefix; on a corpus without
KJV / Shakespeare names, such as WikiText-103 or a ``text:`` corpus, every window is outside KJV and
``source`` has no contrast: choose the others with --attributes), a judge
(bag-of-words logistic regression) is fitted on training documents, directions are fitted on training
windows, and held-out windows of the negative side are steered towards the positive side by each method:

- ``codec-mean`` / ``codec-probe``: the passage's own CALM latents + alpha * direction (mean difference of
  the autoencoder latents, or a probe's weight), decoded: does the vector space hold the attribute as a
  direction that survives decoding?
- ``latent-mean`` / ``latent-probe``: the CALM continues the passage; alpha * direction is added to every
  latent it generates, before decoding;
- ``hidden-mean`` / ``hidden-probe``: the CALM continues the passage with alpha * direction added to one
  block's output (its residual stream, the energy transformer's hidden state) at every position;
- ``token-actadd``: the token baseline continues it with the same mean-difference recipe on its residual
  stream (activation addition);
- ``token-logit``: the token baseline continues it with alpha nats added to the logits of the attribute's
  most over-represented tokens.

alpha is in units of the mean-difference vector (alpha = 1 moves the negative mean onto the positive one;
probe directions are scaled to that norm), and in nats for ``token-logit``. Per (attribute, method, alpha),
on the same prompts and sampling noise: judge success (the steered text judged positive; Wilson 95%
interval), fidelity to the alpha = 0 output (token overlap, chrF), fluency (the token baseline's
per-token loss on the output, after the prompt for generation), and for the codec level the fraction of
steered latents still on the autoencoder's manifold. Writes rows.csv, steering.json, summary.md,
examples.md and frontier.png / fidelity.png under results/<run>/.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np

from calm.autoencoder import manifold_distance
from calm.checkpoint import load_pretrained
from calm.checks import check_numbers, in_range, merge_duplicates, positive_ints
from calm.corpus import load_split
from calm.energy_transformer import ON_MANIFOLD_TOL
from calm.files import atomic_write_text
from calm.tracking import check_tracking
from experiments.common.config import TrackerName, check_run_name, default_tracking, unhashed
from experiments.common.models import checkpoint_id, ensure_k2_models
from experiments.common.sweep import claim_single_run, cli, mark_finished
from experiments.common.tables import mean_interval
from experiments.steering_methods import (
    ATTRIBUTES,
    Judge,
    activations,
    attribute_labels,
    attribute_tokens,
    calm_generate,
    check_attribute,
    codec_steer,
    cut_windows,
    document_sources,
    judge_labels,
    logit_bias,
    mean_direction,
    probe_direction,
    residual_shift,
    rows_per_piece,
    token_nll,
)
from experiments.steering_report import write_report
from protocols.metrics import wilson_interval

__all__ = ["METHODS", "Config", "main", "reach"]

METHODS = ("codec-mean", "codec-probe", "latent-mean", "latent-probe", "hidden-mean", "hidden-probe",
           "token-actadd", "token-logit")


@dataclass
class Config:
    """One steering run."""

    # the models' weights (checkpoint ids in run.json) name the run, not the paths they are read from
    checkpoint: str | None = unhashed(None)
    """CALM autoencoder directory; none: experiments.dialogue's K = 2 autoencoder (trained once, cached)"""
    lm_checkpoint: str | None = unhashed(None)
    """energy transformer on that autoencoder; none: experiments.common.models.ensure_calm's (trained once)"""
    token_lm_checkpoint: str | None = unhashed(None)
    """token baseline with the autoencoder's tokenizer (steered, and the fluency judge); none: ensure_token_lm's"""
    runs_dir: str = unhashed("runs")
    """where the default models are cached"""
    results_dir: str = unhashed("results")
    """where the run directory goes"""
    run_name: str | None = unhashed(None)
    """run directory name; default steering-<energy transformer directory name>"""
    corpus: str = "kjv+shakespeare"
    """judge and directions: its train split; prompts: its test split (any corpus the autoencoder's tokenizer
    encodes: WikiText-103, text:<path>; ``source`` needs the KJV / Shakespeare document names)"""
    attributes: tuple[str, ...] = ATTRIBUTES
    """attributes steered (source, archaic, question, speech)"""
    methods: tuple[str, ...] = METHODS
    """steering methods compared"""
    alphas: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0)
    """step sizes, increasing from 0 (the unsteered reference): multiples of the mean difference; nats of logit
    bias for token-logit"""
    example_alphas: tuple[float, ...] = ()
    """alphas shown in examples.md besides 0, each one of --alphas; none given: three spread over them (1 4 16 of
    the default alphas)"""
    prompts: int = 256
    """held-out negative-side windows steered per attribute"""
    tokens: int = 16
    """window length: prompt, continuation, judge and direction windows (a multiple of K)"""
    direction_windows: int = 2000
    """training windows per side that directions are fitted on"""
    judge_windows: int = 30000
    """training windows the judges see (a uniform sample)"""
    probe_rows: int = 20000
    """probe directions: at most this many activation rows per side (a uniform sample)"""
    layer: int = 1
    """block whose output (residual stream) the hidden and activation-addition methods steer, 0-based"""
    bias_tokens: int = 20
    """token-logit: how many over-represented tokens get the bias"""
    seed: int = 0
    """seed of the samples, the prompts and the generation noise"""
    plots: bool = unhashed(True)
    """write the PNG plots"""
    overwrite: bool = unhashed(False)
    """replace a finished run of these settings in the run directory (a finished run is otherwise refused)"""
    tracking: TrackerName = default_tracking()
    """experiment tracker (calm.tracking): mlflow (results_dir/mlflow.db unless --tracking-uri), wandb or none
    (default from LATENTCOMM_TRACKING, else mlflow)"""
    tracking_uri: str = unhashed("")
    """MLflow store or server (sqlite:///path/mlflow.db, http://host:5000); empty: results_dir/mlflow.db"""

    def __post_init__(self) -> None:
        check_numbers(self)
        check_tracking(self.tracking, self.tracking_uri)
        merge_duplicates(self, "attributes", "methods", "alphas", "example_alphas")
        positive_ints(self, "prompts", "tokens", "direction_windows", "judge_windows", "probe_rows", "bias_tokens")
        positive_ints(self, "layer", "seed", minimum=0)
        if unknown := set(self.attributes) - set(ATTRIBUTES):
            raise ValueError(f"unknown attributes {sorted(unknown)}; choose from {ATTRIBUTES}")
        if unknown := set(self.methods) - set(METHODS):
            raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
        if not self.attributes or not self.methods:
            raise ValueError("give at least one attribute and one method")
        alphas = " ".join(f"{a:g}" for a in self.alphas)
        if not self.alphas or self.alphas[0] != 0:
            raise ValueError(f"--alphas must start with 0 (the unsteered reference), got {alphas}")
        in_range("alphas", self.alphas, 0, 1e6)
        if list(self.alphas) != sorted(self.alphas):
            raise ValueError(f"--alphas must increase from 0 (the 50% crossing is read between neighbours), got "
                             f"{alphas}")
        if stray := [a for a in self.example_alphas if a not in self.alphas]:
            raise ValueError(f"--example-alphas {' '.join(f'{a:g}' for a in stray)}: not among --alphas {alphas} "
                             "(examples.md shows outputs the run made)")
        if self.run_name is not None:
            check_run_name(self.run_name)

    def shown_alphas(self) -> tuple[float, ...]:
        """The alphas of examples.md besides 0: --example-alphas, else three spread over the steered ones."""
        if self.example_alphas:
            return self.example_alphas
        steered = [a for a in self.alphas if a > 0]
        return tuple(dict.fromkeys(steered[round(i * (len(steered) - 1) / 2)] for i in range(3))) if steered else ()


def models(cfg: Config):
    """``(autoencoder dir, energy transformer dir, token baseline dir)``: given, or the cached defaults."""
    return ensure_k2_models(runs_dir=cfg.runs_dir, corpus=cfg.corpus, checkpoint=cfg.checkpoint,
                            lm_checkpoint=cfg.lm_checkpoint, token_lm_checkpoint=cfg.token_lm_checkpoint)


def reach(alphas, success, nll, target: float = 0.5) -> dict:
    """The first alpha at which ``success`` reaches ``target`` (linear between grid points) and the loss there
    minus the loss at alpha = 0: ``{"alpha", "nll_cost"}``, both None when it is never reached."""
    alphas, success, nll = (np.asarray(v, dtype=np.float64) for v in (alphas, success, nll))
    for i in range(len(alphas)):
        if success[i] >= target:
            if i == 0:
                return {"alpha": 0.0, "nll_cost": 0.0}
            t = (target - success[i - 1]) / (success[i] - success[i - 1])
            at = nll[i - 1] + t * (nll[i] - nll[i - 1])
            return {"alpha": float(alphas[i - 1] + t * (alphas[i] - alphas[i - 1])), "nll_cost": float(at - nll[0])}
    return {"alpha": None, "nll_cost": None}


def _directions(cfg: Config, methods: set[str], ae, lm, tm, pos_ids, neg_ids) -> dict[str, np.ndarray]:
    """Each method's unit step (alpha = 1) for one attribute, fitted on training windows."""
    out: dict[str, np.ndarray] = {}
    # codec and latent methods share the autoencoder's latents: one set of activations per model
    for prefixes, model, layer in ((("codec", "latent"), ae, None), (("hidden",), lm, cfg.layer),
                                   (("token",), tm, cfg.layer)):
        wanted = {m for m in methods if m.split("-", 1)[0] in prefixes and m != "token-logit"}
        if not wanted:
            continue
        if layer is not None and layer >= len(model.backbone.layers):
            raise ValueError(f"layer {layer} is past the {len(model.backbone.layers)} blocks of {type(model).__name__}")
        pos, neg = activations(model, pos_ids, layer=layer), activations(model, neg_ids, layer=layer)
        fitted = {"mean": mean_direction(pos, neg)}
        if any(m.endswith("-probe") for m in wanted):
            fitted["probe"] = probe_direction(pos, neg, max_rows=cfg.probe_rows, seed=cfg.seed)
        for method in wanted:
            out[method] = fitted["probe" if method.endswith("-probe") else "mean"]  # token-actadd: the mean
    return out


def _outputs(method: str, alpha: float, step, prompts, *, ae, lm, tm, bias_ids, tokens: int, layer: int, seed: int):
    """Steered output ids ``(B, tokens)`` (and the steered latents for the codec level)."""
    import torch

    gen = torch.Generator().manual_seed(seed)  # the same noise at every alpha: alpha = 0 is the reference
    shift = None if method == "token-logit" else torch.as_tensor(alpha * step, dtype=torch.float32)
    if method.startswith("codec"):
        return codec_steer(ae, prompts, shift)
    if method.startswith("latent"):
        return calm_generate(lm, prompts, tokens, latent_shift=shift, generator=gen), None
    if method.startswith("hidden"):
        with residual_shift(lm.backbone, layer, shift):
            return calm_generate(lm, prompts, tokens, generator=gen), None
    if method == "token-actadd":
        with residual_shift(tm.backbone, layer, shift):
            return tm.generate(prompts, tokens, generator=gen), None
    with logit_bias(tm, bias_ids, alpha):
        return tm.generate(prompts, tokens, generator=gen), None


def _score(method, alpha, out, z, base, prompts, judge, tm, ae, tok) -> tuple[dict, list[str]]:
    """One grid point's metrics over the prompts, and the decoded outputs. ``base``: ``(ids, texts)`` of the
    method's alpha = 0 output, the fidelity reference; None: ``out`` is that output."""
    import sacrebleu
    import torch

    texts = tok.batch_decode(out.tolist())
    base, base_texts = base if base is not None else (out, texts)
    hit = judge.positive(texts)
    lo, hi = wilson_interval(int(hit.sum()), len(hit))
    overlap = (out == base).float().mean(1).numpy()
    chrf = np.array([sacrebleu.sentence_chrf(t, [b]).score / 100 for t, b in zip(texts, base_texts)])
    context = prompts[:, :0] if method.startswith("codec") else prompts
    nll = token_nll(tm, context, out)
    row = {"method": method, "level": "codec" if method.startswith("codec") else "generation",
           "model": "token" if method.startswith("token") else "calm", "alpha": alpha,
           "success": float(hit.mean()), "success_lo": lo, "success_hi": hi, "n": len(hit)}
    for name, values in (("overlap", overlap), ("chrf", chrf), ("nll", nll)):
        m, lo_, hi_ = mean_interval(values)
        row.update({name: m, f"{name}_lo": lo_, f"{name}_hi": hi_})
    if z is not None:
        with torch.no_grad():
            piece = rows_per_piece(ae.config.K * ae.config.vocab_size)  # chunks whose logits fit the budget
            row["on_manifold"] = float((manifold_distance(ae, z, batch=piece) <= ON_MANIFOLD_TOL).float().mean())
    return row, texts


def _context_use(lm, tm, ids: np.ndarray, cfg: Config, rng) -> dict[str, float]:
    """How much each model's continuation depends on its prompt: the share of tokens that stay the same when
    two sets of random held-out prompts are continued with the same sampling noise (1: the prompt is ignored).
    A hidden-state shift can only steer a model whose next vector reads its hidden state."""
    import torch

    pick = rng.choice(len(ids), min(2 * cfg.prompts, len(ids)) // 2 * 2, replace=False)
    a, b = (torch.as_tensor(ids[half]) for half in np.split(pick, 2))
    out = {}
    for name, run in (("calm", lambda p: calm_generate(lm, p, cfg.tokens, generator=torch.Generator().manual_seed(cfg.seed))),
                      ("token", lambda p: tm.generate(p, cfg.tokens, generator=torch.Generator().manual_seed(cfg.seed)))):
        out[name] = float((run(a) == run(b)).float().mean())
    return out


def main(cfg: Config) -> dict:
    """Run every (attribute, method, alpha); returns (and writes) steering.json's content."""
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    t0 = time.time()
    ae_dir, lm_dir, tm_dir = models(cfg)
    ae, tok = load_pretrained(ae_dir)
    lm, _ = load_pretrained(lm_dir)
    tm, _ = load_pretrained(tm_dir)
    for m in (ae, lm, tm):
        m.eval()
    K = ae.config.K
    if cfg.tokens % K:
        raise ValueError(f"tokens ({cfg.tokens}) must be a multiple of the autoencoder's K = {K}")
    if (2 * cfg.tokens) // K > lm.config.max_patches or 2 * cfg.tokens > tm.config.max_positions:
        raise ValueError(f"a {cfg.tokens}-token prompt plus as many new tokens exceeds a model's context")
    for prefix, model, path in (("hidden", lm, lm_dir), ("token-actadd", tm, tm_dir)):  # the steered blocks
        blocks = len(model.backbone.layers)
        if any(m.startswith(prefix) for m in cfg.methods) and cfg.layer >= blocks:
            raise ValueError(f"--layer {cfg.layer}: {path.name} has {blocks} blocks (--layer 0 to {blocks - 1})")
    train_docs, test_docs = load_split(cfg.corpus, "train"), load_split(cfg.corpus, "test")
    if "source" in cfg.attributes:  # the documents' names alone tell, before a run directory is claimed
        check_attribute(attribute_labels([], document_sources(train_docs), "source"), "source", cfg.corpus, "train")
    run_dir = claim_single_run(cfg, cfg.run_name or f"steering-{lm_dir.name}",
                               " + ".join(checkpoint_id(d) for d in (ae_dir, lm_dir, tm_dir)), experiment="steering")
    print(f"[steering] autoencoder {ae_dir}\n[steering] CALM {lm_dir}\n[steering] token baseline {tm_dir}\n"
          f"[steering] -> {run_dir}", flush=True)
    train = cut_windows(train_docs, tok, cfg.tokens, max_windows=cfg.judge_windows, seed=cfg.seed)
    test = cut_windows(test_docs, tok, cfg.tokens, seed=cfg.seed)
    for attribute in cfg.attributes:  # every attribute has both sides, before minutes of fitting and steering
        check_attribute(attribute_labels(train.text, train.source, attribute), attribute, cfg.corpus, "train")
        if not (attribute_labels(test.text, test.source, attribute) == 0).any():
            raise ValueError(f"no held-out window on the negative side of {attribute!r} in corpus {cfg.corpus!r}")
    rng = np.random.default_rng(cfg.seed)
    context_use = _context_use(lm, tm, test.ids, cfg, rng)
    print(f"[steering] same noise, another prompt: {context_use['calm']:.3f} of the CALM's tokens and "
          f"{context_use['token']:.3f} of the token baseline's stay the same", flush=True)
    rows, examples, attributes, shown = [], {}, {}, cfg.shown_alphas()
    total = len(cfg.attributes) * len(cfg.methods) * len(cfg.alphas)
    bar = tqdm(total=total, desc="steering", unit="point", mininterval=5)
    for attribute in cfg.attributes:
        y_train = attribute_labels(train.text, train.source, attribute)
        y_test = attribute_labels(test.text, test.source, attribute)
        keep = y_train >= 0
        j_train, j_test = (judge_labels(w.text, w.source, attribute) for w in (train, test))
        judge = Judge().fit([t for t, y in zip(train.text, j_train) if y >= 0], j_train[j_train >= 0])
        judge_accuracy = judge.balanced_accuracy([t for t, y in zip(test.text, j_test) if y >= 0], j_test[j_test >= 0])
        pos = np.flatnonzero(y_train == 1)
        neg = np.flatnonzero(y_train == 0)
        pos = rng.choice(pos, min(len(pos), cfg.direction_windows), replace=False)
        neg = rng.choice(neg, min(len(neg), cfg.direction_windows), replace=False)
        steps = _directions(cfg, set(cfg.methods), ae, lm, tm, train.ids[pos], train.ids[neg])
        bias_ids = attribute_tokens(train.ids[keep], y_train[keep], len(tok), cfg.bias_tokens)
        candidates = np.flatnonzero(y_test == 0)
        if len(candidates) == 0:
            raise ValueError(f"no held-out window on the negative side of {attribute!r}")
        chosen = np.sort(rng.choice(candidates, min(cfg.prompts, len(candidates)), replace=False))
        prompts = torch.as_tensor(test.ids[chosen])
        # the reference: the text that really follows each prompt, read by the same fluency judge
        follows = (chosen + 1 < len(test)) & (test.doc[np.minimum(chosen + 1, len(test) - 1)] == test.doc[chosen])
        real_nll = token_nll(tm, prompts[torch.as_tensor(follows)], torch.as_tensor(test.ids[chosen[follows] + 1]))
        attributes[attribute] = {
            "judge_balanced_accuracy": judge_accuracy, "train_windows": {"positive": int((y_train == 1).sum()),
                                                                         "negative": int((y_train == 0).sum())},
            "direction_norm": {m: float(np.linalg.norm(v)) for m, v in steps.items()},
            "bias_tokens": tok.batch_decode([[int(i)] for i in bias_ids]), "prompts": len(chosen),
            "prompt_judged_positive": float(judge.positive([test.text[i] for i in chosen]).mean()),
            "real_continuation_nll": float(real_nll.mean()) if len(real_nll) else None}
        print(f"[steering] {attribute}: judge balanced accuracy {judge_accuracy:.3f} on held-out documents; "
              f"{len(chosen)} prompts", flush=True)
        examples[attribute] = {"prompt": tok.decode(prompts[0].tolist()), "outputs": {}}
        for method in cfg.methods:
            base = None
            for alpha in cfg.alphas:
                out, z = _outputs(method, alpha, steps.get(method), prompts, ae=ae, lm=lm, tm=tm, bias_ids=bias_ids,
                                  tokens=cfg.tokens, layer=cfg.layer, seed=cfg.seed)
                row, texts = _score(method, alpha, out, z, base, prompts, judge, tm, ae, tok)
                if base is None:
                    base = (out, texts)
                rows.append({"attribute": attribute, **row})
                if alpha == 0 or alpha in shown:
                    examples[attribute]["outputs"].setdefault(method, {})[str(alpha)] = texts[0]
                bar.update()
    bar.close()
    frame = pd.DataFrame(rows)
    atomic_write_text(run_dir / "rows.csv", frame.to_csv(index=False))
    reached = [{"attribute": a, "method": m, **reach(g["alpha"], g["success"], g["nll"]),
                "success_at_0": float(g["success"].iloc[0]), "max_success": float(g["success"].max())}
               for (a, m), g in frame.groupby(["attribute", "method"], sort=False)]
    default = Config()
    command = "python -m experiments.steering" + "".join(
        f" --{flag.replace('_', '-')} {value}" for flag, value in
        (("checkpoint", cfg.checkpoint), ("lm_checkpoint", cfg.lm_checkpoint),
         ("token_lm_checkpoint", cfg.token_lm_checkpoint),
         ("corpus", cfg.corpus if cfg.corpus != default.corpus else None),
         ("attributes", " ".join(cfg.attributes) if cfg.attributes != default.attributes else None)) if value)
    result = {"checkpoint": str(ae_dir), "lm_checkpoint": str(lm_dir), "token_lm_checkpoint": str(tm_dir),
              "attributes": attributes, "reach_50": reached, "same_noise_other_prompt_overlap": context_use, "examples": examples, "config": asdict(cfg),
              "seconds": round(time.time() - t0, 1), "command": command}
    atomic_write_text(run_dir / "steering.json", json.dumps(result, indent=2) + "\n")
    write_report(result, frame, run_dir, plots=cfg.plots)
    mark_finished(run_dir)
    print(f"[steering] done in {result['seconds']:.0f} s: {run_dir / 'summary.md'}\n[steering] reproduce: {command}",
          flush=True)
    return result


if __name__ == "__main__":
    raise SystemExit(cli(main, Config, prog="python -m experiments.steering", description=__doc__.split("\n\n")[0]))
