"""The separation link's rate oracle, measured: pick rules, rate menus and what each costs.

    python bench/separation_oracle.py --checkpoint runs/ae-tiny-XXXX [--source bigram|lm] [--budgets 16 32]
        [--channels awgn rayleigh] [--menus standard fine] [--val 512] [--test 512] [--sample 32]

The experiment's oracle (``experiments.reconstruction.pick_rate``), replayed in one process: for each budget n,
channel and sigma (the reconstruction defaults), every (code, k, modulation) of the union of ``--menus``
(``protocols.separation.MCS_MENUS``, LDPC and polar) sends ``--val`` validation passages (drawn as
``rate_oracle.validation_passages`` does) through the same noise draw, and the validation token accuracy of
each entry is scored by each pick rule:

- ``exact``: every frame decoded (``SeparationProtocol.decode``; frames with bit errors decoded honestly);
- ``fill``: a frame with any bit error counted as the fill-only guess ``fill([], L)``
  (``SeparationProtocol.decode_bound``), an intact one as its decode;
- ``zero``: a frame with any bit error counted 0 tokens right (a true lower bound);
- ``sample``: intact frames exact, the wrong frames' accuracy estimated from ``--sample`` of them decoded
  honestly (drawn with a fixed seed; unbiased).

Per menu and rule the pick is the best entry (the first in menu order on ties), then played on ``--test`` test
passages (a random subset of the trials' 2,000) with fresh noise and decoded exactly: its test token accuracy is what a trial would report. Prints JSON:
per (channel, n, sigma) every entry's validation score under each rule and, per menu and rule, the pick, its
validation accuracy and its test accuracy; totals (picks that differ from the exact rule's, mean test accuracy lost); the seconds each rule and
menu spent (receive + decode, the oracle's own work; the frames are coded once per passage and entry, as the
agents' ``FrameCoder`` does); the exact rule's wrong frames (how many, their honest accuracy beside the fill-only
guess's, ms per honest decode); the frame sizes (header and payload bits, tokens carried) of every entry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol_power import newest_autoencoder  # noqa: E402  (bench/ is the script's own directory)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

SIGMAS = (0.0, 0.1, 0.178, 0.316, 0.5, 0.708, 1.0, 2.0)
RULES = ("exact", "fill", "zero", "sample")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None,
                        help="an autoencoder checkpoint directory (its tokenizer); default: the newest under runs/")
    parser.add_argument("--source", default="bigram", choices=("bigram", "lm"))
    parser.add_argument("--token-lm", default=None, help="the token baseline (--source lm; else ensure_token_lm's)")
    parser.add_argument("--corpus", default="kjv+shakespeare")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--budgets", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--channels", nargs="+", default=["awgn", "rayleigh"])
    parser.add_argument("--sigmas", type=float, nargs="+", default=list(SIGMAS))
    parser.add_argument("--menus", nargs="+", default=["standard", "fine"])
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    parser.add_argument("--val", type=int, default=512, help="validation passages the oracle plays")
    parser.add_argument("--test", type=int, default=512, help="test passages each pick plays")
    parser.add_argument("--sample", type=int, default=32, help="wrong frames the sample rule decodes per entry")
    parser.add_argument("--L", type=int, default=32)
    args = parser.parse_args(argv)

    import numpy as np
    import torch

    from calm.data import load_token_ids, make_passages
    from calm.tokenizer import load_tokenizer
    from experiments.common.sweep import make_channel
    from protocols.separation import MCS_MENUS, SeparationProtocol, TokenSourceModel, mcs_menu

    torch.set_num_threads(1)
    ckpt = Path(args.checkpoint or newest_autoencoder()).resolve()
    tok = load_tokenizer(str(ckpt / "tokenizer.json"))
    V, L = len(tok), args.L
    train = make_passages(load_token_ids(args.corpus, tok, "train", progress=False), L, seed=0)
    val = np.unique(make_passages(load_token_ids(args.corpus, tok, "validation", progress=False), L,
                                  max_passages=args.val, seed=0), axis=0).astype(np.int64)
    test = make_passages(load_token_ids(args.corpus, tok, "test", progress=False), L, max_passages=2000,
                         seed=1).astype(np.int64)  # the trials' passages; a random subset of them (in stream order
    test = test[np.sort(np.random.default_rng(0).permutation(len(test))[: args.test])]  # the first are one book)
    extra = {}
    if args.source == "lm":
        from experiments.common.models import ensure_token_lm
        from protocols.lm_source import LMSourceModel

        with contextlib.redirect_stdout(sys.stderr):  # its progress lines stay out of the JSON
            lm_dir = ensure_token_lm(ckpt, token_lm_checkpoint=args.token_lm, runs_dir=args.runs_dir,
                                     corpus=args.corpus, steps=900)
        source = LMSourceModel.from_checkpoint(lm_dir).fit(train)
        extra = {"token_lm": source.weights_id}
    else:
        source = TokenSourceModel(V, "bigram").fit(train)
    out: dict = {"checkpoint": str(ckpt), "source": args.source, "val": len(val), "test": len(test),
                 "menus": args.menus, "rules": args.rules, "states": [], "frames": {}}
    seconds = {f"{m}/{r}": 0.0 for m in args.menus for r in args.rules}
    seconds_encode = 0.0
    guess = source.fill(np.zeros(0, dtype=np.int64), L)
    wrong_frames = {"count": 0, "honest": 0.0, "fill_guess": 0.0, "seconds": 0.0}  # the exact rule's wrong frames
    for n in args.budgets:
        menus, protos = {}, {}
        for name in args.menus:
            keys = []
            for code in ("ldpc", "polar"):
                for cfg in mcs_menu(n, vocab_size=V, source_model=args.source, code=code, rates=MCS_MENUS[name],
                                    **extra):
                    key = f"{cfg.code}-k{cfg.info_bits()}-{cfg.modulation}"
                    if key not in protos:
                        protos[key] = SeparationProtocol(cfg, source=source).fit(train[:4])
                    keys.append(key)
            menus[name] = keys
        t0 = time.time()
        sent = {key: p.frames(val) for key, p in protos.items()}  # coded once: the coder keeps them
        seconds_encode += time.time() - t0
        out["frames"][str(n)] = {key: {"k": p.k, "header_bits": p.header_bits, "payload_bits": p.payload_bits,
                                       "mean_tokens_val": round(float(sent[key][1].mean()), 3)}
                                 for key, p in protos.items()}
        log(f"n={n}: {len(protos)} entries ({', '.join(f'{m} {len(k)}' for m, k in menus.items())}), coded in "
            f"{time.time() - t0:.0f} s")
        for channel_name in args.channels:
            for sigma in args.sigmas:
                channel = make_channel(channel_name, sigma)
                state_seed = int(np.random.SeedSequence(
                    [n, int(round(sigma * 1e6)), args.channels.index(channel_name)]).generate_state(1)[0])
                scores = {r: {} for r in args.rules}
                cost = {r: {} for r in args.rules}
                for key, p in protos.items():
                    frames, T = sent[key]
                    x = p.link.modulate(frames)
                    y, gain = channel.transmit(x, np.random.default_rng(state_seed))
                    t0 = time.time()
                    bits = np.asarray(p.link.receive(y.astype(np.float32), channel, gain)).astype(np.uint8)
                    t_rx = time.time() - t0
                    intact = (bits == frames).all(axis=1)
                    t0 = time.time()
                    right = np.empty(len(val))
                    if intact.any():
                        right[intact] = (p.decode_frames(frames[intact]) == val[intact]).mean(axis=1)
                    t_intact = time.time() - t0
                    wrong = np.flatnonzero(~intact)
                    if "exact" in args.rules:
                        t0 = time.time()
                        exact = right.copy()
                        if len(wrong):
                            exact[wrong] = (p.decode_frames(bits[wrong]) == val[wrong]).mean(axis=1)
                            wrong_frames["count"] += len(wrong)
                            wrong_frames["honest"] += float(exact[wrong].sum())
                            wrong_frames["fill_guess"] += float((guess[None, :] == val[wrong]).mean(axis=1).sum())
                            wrong_frames["seconds"] += time.time() - t0
                        scores["exact"][key] = float(exact.mean())
                        cost["exact"][key] = t_rx + t_intact + time.time() - t0
                    if "fill" in args.rules:
                        fill = right.copy()
                        fill[wrong] = (guess[None, :] == val[wrong]).mean(axis=1)
                        scores["fill"][key] = float(fill.mean())
                        cost["fill"][key] = t_rx + t_intact
                    if "zero" in args.rules:
                        zero = right.copy()
                        zero[wrong] = 0.0
                        scores["zero"][key] = float(zero.mean())
                        cost["zero"][key] = t_rx + t_intact
                    if "sample" in args.rules:
                        t0 = time.time()
                        total = float(right[intact].sum())
                        if len(wrong):
                            pick = np.random.default_rng(state_seed + 1).permutation(wrong)[: args.sample]
                            sampled = (p.decode_frames(bits[pick]) == val[pick]).mean(axis=1)
                            total += float(sampled.mean()) * len(wrong)
                        scores["sample"][key] = total / len(val)
                        cost["sample"][key] = t_rx + t_intact + time.time() - t0
                state = {"channel": channel_name, "n": n, "sigma": sigma, "picks": {},
                         "val": {k: {r: round(scores[r][k], 5) for r in args.rules} for k in protos}}
                tested: dict[str, float] = {}

                def test_accuracy(key: str, tested=tested, channel=channel, seed=state_seed + 7,
                                  protos=protos) -> float:
                    if key not in tested:  # the pick plays the test passages, every frame decoded
                        p = protos[key]
                        frames, _ = p.frames(test)
                        y, gain = channel.transmit(p.link.modulate(frames), np.random.default_rng(seed))
                        tested[key] = float((p.decode(y.astype(np.float32), channel=channel, gain=gain)
                                             == test).mean())
                    return tested[key]

                for menu, keys in menus.items():
                    for rule in args.rules:
                        vals = [scores[rule][k] for k in keys]
                        best = keys[int(np.argmax(vals))]
                        state["picks"][f"{menu}/{rule}"] = {
                            "pick": best, "val_rule": round(max(vals), 4),
                            "val_exact": round(scores["exact"][best], 4) if "exact" in args.rules else None,
                            "test": round(test_accuracy(best), 4)}
                        seconds[f"{menu}/{rule}"] += sum(cost[rule][k] for k in keys)
                out["states"].append(state)
                log(f"{channel_name} n={n} sigma={sigma}: " + ", ".join(
                    f"{m}: {v['pick']} {v['test']:.3f}" for m, v in state["picks"].items()))
    summary = {}
    for menu in args.menus:
        for rule in args.rules:
            name = f"{menu}/{rule}"
            ref = f"{menu}/exact" if "exact" in args.rules else name
            diff = [s for s in out["states"] if s["picks"][name]["pick"] != s["picks"][ref]["pick"]]
            summary[name] = {
                "mean_test": round(float(np.mean([s["picks"][name]["test"] for s in out["states"]])), 4),
                "picks_differing_from_exact": len(diff), "states": len(out["states"]),
                "test_lost_vs_exact": round(float(np.mean([s["picks"][ref]["test"] - s["picks"][name]["test"]
                                                           for s in out["states"]])), 4),
                "seconds": round(seconds[name], 1)}
    out["summary"] = summary
    out["seconds_encode"] = round(seconds_encode, 1)
    count = max(wrong_frames["count"], 1)
    out["wrong_frames"] = {"count": wrong_frames["count"], "accuracy_honest": round(wrong_frames["honest"] / count, 4),
                           "accuracy_fill_guess": round(wrong_frames["fill_guess"] / count, 4),
                           "ms_per_decode": round(1000 * wrong_frames["seconds"] / count, 2)}
    out["coder_counts"] = source._frame_coder.counts
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
