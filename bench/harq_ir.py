"""HARQ with incremental redundancy against one-shot coding: throughput and delivered fraction vs Es/N0 (issue 32).

    python bench/harq_ir.py [--messages 1000] [--channels awgn tdl-a-ls] [--plot docs/img/harq_ir.png]

``protocols.harq.HarqIR``: k0 = 80 information bits + CRC16 (k = 96) on a 5G LDPC mother code of 3 x 128 coded
bits, BPSK; round 1 sends 128 bits (rate 0.75), each further round 128 more (0.375, then 0.25); the receiver
stops at the first CRC pass. Beside it, one-shot codes of the same k at each of the three lengths (128, 256, 384
coded bits), judged by the same CRC. Every scheme sends the same messages; each round or one-shot frame meets
fresh channel draws. Throughput: correct information bits per complex channel use (``environments.convention``:
two real uses per complex use), retransmissions counted. Channels: ``experiments.common.sweep.make_channel``
names (awgn, rayleigh, tdl-<model>-<csi>).

``--separation``: the same schemes carry the separated link's frames instead of random bits: passages of L = 32
tokens of the test split (``bpe:8192``, kjv+shakespeare), range-coded under the bigram fitted on the train split
into k0 = 80-bit frames (``protocols.separation``'s coder: a header stating T, then the tokens that fit; the rest is
the model's fill). Every message is decoded from what its last round left, whether the CRC passed or not (as the
separation link decodes frames with bit errors). Reported: token accuracy and correct tokens per complex channel use.
Prints one JSON object; progress goes to stderr.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from environments.convention import SNR_LABEL, sigma_from_es_n0_db  # noqa: E402
from experiments.common.sweep import make_channel  # noqa: E402
from protocols.harq import HarqIR  # noqa: E402

K0, N1, ROUNDS = 80, 128, 3
L = 32  # tokens per passage (--separation)


def schemes() -> dict[str, HarqIR]:
    """HARQ-IR and the one-shot codes of the same k at each of its lengths, by label."""
    return {"harq-ir": HarqIR(K0, N1, ROUNDS), **{f"one-shot n={r * N1}": HarqIR(K0, r * N1, 1)
                                                 for r in range(1, ROUNDS + 1)}}


def sweep(payload: np.ndarray, channels: list[str], es_n0_db: list[float], metrics, tag: str, seed: int = 0) -> dict:
    """Every scheme sends ``payload (B, k0)`` at every (channel, Es/N0), each with noise of its own; ``metrics(outcome)``
    makes a scheme's entry of the row; the first metric goes to the progress line."""
    coded = schemes()
    out: dict = {}
    for name in channels:
        rows = []
        for db in es_n0_db:
            t0 = time.time()
            channel = make_channel(name, sigma_from_es_n0_db(db))
            row = {"es_n0_db": db}
            for i, (label, scheme) in enumerate(coded.items()):
                row[label] = metrics(scheme.transmit(payload, channel,
                                                     np.random.default_rng([seed, int(db * 100) + 10_000, i])))
            rows.append(row)
            print(f"[harq] {tag}{name} {db:+.0f} dB: " + ", ".join(
                f"{k} {next(iter(v.values())):.3f}" for k, v in row.items() if k != "es_n0_db")
                + f" ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        out[name] = rows
    return out


def run(messages: int, channels: list[str], es_n0_db: list[float], seed: int = 0) -> dict:
    info = np.random.default_rng(seed).integers(0, 2, (messages, K0))

    def metrics(o) -> dict:
        return {"throughput": round(o.throughput(K0), 4), "delivered": round(float(o.correct.mean()), 4),
                "undetected": int((o.delivered & ~o.correct).sum()), "mean_rounds": round(float(o.rounds.mean()), 3)}

    return sweep(info, channels, es_n0_db, metrics, "", seed)


def separation_frames(messages: int, seed: int = 0, tokenizer: str = "bpe:8192"):
    """``(frames (B, k0), passages (B, L), decode)``: test passages range-coded into k0-bit frames under the
    train split's bigram, and the function that turns received frames back into token ids."""
    from calm.data import load_token_ids, make_passages
    from calm.tokenizer import get_tokenizer
    from protocols.separation import SeparationProtocol, SeparationProtocolConfig, TokenSourceModel

    tok = get_tokenizer(tokenizer)
    train = make_passages(load_token_ids("kjv+shakespeare", tok, "train", progress=False), L)
    test = make_passages(load_token_ids("kjv+shakespeare", tok, "test", progress=False), L, max_passages=messages,
                         seed=seed + 1).astype(np.int64)
    source = TokenSourceModel(len(tok), "bigram").fit(train)
    proto = SeparationProtocol(SeparationProtocolConfig(vocab_size=len(tok), budget=N1), source=source).fit(train)
    frames = np.stack([proto.coder.frame(ids, proto.header, K0)[1] for ids in test])

    def decode(bits: np.ndarray) -> np.ndarray:
        return np.stack([proto.coder.decode(b, proto.header, K0, L) for b in bits])

    return frames, test, decode


def run_separation(messages: int, channels: list[str], es_n0_db: list[float], seed: int = 0) -> dict:
    frames, passages, decode = separation_frames(messages, seed)

    def metrics(o) -> dict:
        right = (decode(o.bits) == passages).sum(axis=1)
        return {"token_accuracy": round(float(right.mean() / L), 4),
                "tokens_per_complex_use": round(2.0 * float(right.sum()) / float(o.real_uses.sum()), 4),
                "mean_rounds": round(float(o.rounds.mean()), 3)}

    tokens = round(float((decode(frames) == passages).sum(1).mean()), 2)
    return {"tokens_per_frame": tokens, **sweep(frames, channels, es_n0_db, metrics, "separation ", seed)}


def best_one_shot_gap(rows: list[dict]) -> float:
    """Largest throughput HARQ-IR gains over the best one-shot code at the same Es/N0 (bits per complex use)."""
    return max(r["harq-ir"]["throughput"] - max(v["throughput"] for k, v in r.items() if k.startswith("one-shot"))
               for r in rows)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from calm.files import save_figure

    fig, axes = plt.subplots(2, len(result), figsize=(4.5 * len(result), 6.5), squeeze=False, sharex=True)
    for j, (name, rows) in enumerate(result.items()):
        x = [r["es_n0_db"] for r in rows]
        for label in [k for k in rows[0] if k != "es_n0_db"]:
            style = {"lw": 2.2, "color": "k"} if label == "harq-ir" else {"lw": 1.2, "ls": "--"}
            axes[0, j].plot(x, [r[label]["throughput"] for r in rows], marker="o", ms=3, label=label, **style)
            axes[1, j].plot(x, [r[label]["delivered"] for r in rows], marker="o", ms=3, label=label, **style)
        axes[0, j].set_title(name, fontsize=9)
        axes[0, j].set_ylabel("correct info bits / complex use")
        axes[1, j].set_ylabel("delivered correctly")
        axes[1, j].set_xlabel(SNR_LABEL)
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"HARQ-IR (5G LDPC, k0 = {K0} + CRC16, up to {ROUNDS} x {N1} BPSK) vs one-shot codes", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    from calm.cli import OneLineErrorParser

    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per point")
    parser.add_argument("--channels", nargs="+", default=["awgn", "tdl-a-ls"], help="make_channel names")
    parser.add_argument("--es-n0-db", type=float, nargs="+", default=[-4.0, -2.0, 0.0, 2.0, 4.0, 6.0, 8.0, 10.0])
    parser.add_argument("--plot", default="", help="also draw the curves to this PNG")
    parser.add_argument("--separation", action="store_true", help="also carry the separated link's token frames")
    args = parser.parse_args(argv)
    if args.messages < 1:
        parser.error(f"--messages must be >= 1, got {args.messages}")
    for name in args.channels:
        try:
            make_channel(name, 0.5)
        except ValueError as exc:
            parser.error(str(exc))
    t0 = time.time()
    curves = run(args.messages, args.channels, args.es_n0_db)
    if args.plot:
        plot(curves, Path(args.plot))
    result = {"benchmark": "harq_ir", "k0": K0, "n1": N1, "rounds": ROUNDS, "messages": args.messages,
              "curves": curves, "harq_gain_over_best_one_shot": {n: round(best_one_shot_gap(r), 4)
                                                                  for n, r in curves.items()}}
    if args.separation:
        result["separation"] = run_separation(args.messages, args.channels, args.es_n0_db)
    return {**result, "seconds": round(time.time() - t0, 1)}


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
