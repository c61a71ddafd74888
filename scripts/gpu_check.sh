#!/usr/bin/env bash
# The GPU checks, one prepared script, under 10 minutes on one H200 (run it on a lent device machine; CPU
# results never depend on it):
#   1. the device (nvidia-smi, torch's view of it);
#   2. training speed and MFU of CALM (K = 2, 4) and the token baseline, bf16 autocast, SDPA attention
#      (bench/gpu_train.py: sizes m and the paper's S over 256-token windows);
#   3. the scaling study's larger points on CUDA (experiments.calm_scaling --device cuda, its own run name),
#      only where Ray and the corpus loaders import there;
#   4. real CUDA placement of agent actors: Ray actors asking for GPUs must hold their models on cuda; where
#      Ray does not import (the device image has no Ray, and its wheel is larger than a call may carry), the
#      agent core itself (the code inside every actor) is checked to load its models on cuda instead, and
#      the output says which of the two ran;
#   5. the released CALM sizes' costs on the GPU (bench/official_cost.py --device cuda: bf16 weights, timed with
#      cuda.synchronize): games/s, passages/s, the LM-prior listener, CALM-M generation and a training step, in
#      the time the steps before it left of the 10 minutes (at most 180 s; skipped under 60 s).
# Everything it measures is written under ${OUT:-gpu-check-out}/ (gpu_train.json, placement.json,
# official_cost.json, logs).
#
#   bash scripts/gpu_check.sh               # on the device machine (python3 there holds a CUDA torch)
#   PYTHON=.venv/bin/python bash scripts/gpu_check.sh     # elsewhere; without a GPU it says so and stops
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)
say() { echo "[gpu_check $(( $(date +%s) - start ))s] $*"; }

say "1. device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/nvidia-smi.txt" || true
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    say "torch ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1)) sees no CUDA device: nothing to check here"
    exit 3
fi
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

say "2. training speed and MFU (bf16 autocast)"
timeout 240 "$PY" bench/gpu_train.py --sizes m S --batch 64 --steps 20 --warmup 5 > "$OUT/gpu_train.json" \
    2> >(tee "$OUT/gpu_train.log" >&2) || say "gpu_train failed (status $?): see $OUT/gpu_train.log"

have_ray=0
"$PY" -c "import ray, datasets" 2>/dev/null && have_ray=1
if [ "$have_ray" = 1 ]; then
    say "3. scaling study, larger points on cuda (families x m x 2 budgets)"
    timeout 240 "$PY" -m experiments.calm_scaling --device cuda --run-name calm-scaling-gpu --sizes m \
        --budgets 2e13 6e13 --results-dir "$OUT/results" --runs-dir "$OUT/runs" 2>&1 | tail -20 \
        || say "the cuda scaling points failed or ran out of time"
else
    say "3. skipped: Ray or datasets does not import here (the CPU study is complete without these points)"
fi

say "4. agent placement"
timeout 120 "$PY" - "$have_ray" "$OUT/placement.json" <<'EOF'
import json, sys, tempfile
from pathlib import Path

import torch

have_ray, out = sys.argv[1] == "1", Path(sys.argv[2])
from calm.autoencoder import Autoencoder, preset
from calm.checkpoint import save_pretrained
from calm.energy_transformer import EnergyTransformer
from calm.energy_transformer import preset as calm_preset

from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import PreTrainedTokenizerFast

# random weights and a word-level vocabulary: placement does not depend on what the models learned
vocab = {"<|pad|>": 0, "<|endoftext|>": 1, **{f"w{i}": i + 2 for i in range(510)}}
backend = Tokenizer(WordLevel(vocab, unk_token="<|pad|>"))
backend.pre_tokenizer = Whitespace()
tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|pad|>")
tmp = Path(tempfile.mkdtemp())
ae = Autoencoder(preset("tiny-k2", vocab_size=len(vocab), pad_id=0))
save_pretrained(ae, tmp / "ae", tok)
save_pretrained(EnergyTransformer(calm_preset("tiny-k2", ae.config)), tmp / "lm", tok)
if have_ray:
    import ray

    from agents import AgentConfig, make_agent
    from calm.ray_runtime import init_ray

    init_ray(address="local", log_to_driver=False)
    cfg = AgentConfig(checkpoint=str(tmp / "ae"), protocols={}, lm_checkpoint=str(tmp / "lm"), num_gpus="auto")
    agents = [make_agent(cfg, name=f"gpu-check-{i}", num_agents=2) for i in range(2)]
    placements = ray.get([a.placement.remote() for a in agents])
    how = "ray actors"
else:
    from agents.actor import CALMAgentCore

    core = CALMAgentCore(str(tmp / "ae"), {}, lm_checkpoint=str(tmp / "lm"), name="gpu-check-core")
    placements = [{**core.placement(), "model_device": str(next(core.model.parameters()).device),
                   "lm_device": str(next(core.lm.parameters()).device)}]
    how = "agent core without Ray (Ray does not import here)"
ok = all(p["device"] == "cuda" for p in placements)
json.dump({"checked_with": how, "all_on_cuda": ok, "placements": placements}, open(out, "w"), indent=1)
print(f"[placement] {how}: {placements}\n[placement] every agent on cuda: {ok}")
sys.exit(0 if ok else 1)
EOF
status=$?

# the released sizes' costs (random weights, speed does not depend on them); a section that a missing package
# stops (pettingzoo, Sionna, sacrebleu) is reported as failed in the JSON and the others still run
left=$(( 590 - ($(date +%s) - start) ))
if [ "$left" -ge 60 ]; then
    limit=$(( left < 180 ? left : 180 ))
    say "5. released CALM sizes' costs on cuda, bf16 (bench/official_cost.py, ${limit}s at most)"
    timeout "$limit" "$PY" bench/official_cost.py --device cuda --dtype bf16 --out "$OUT/official_cost.json" \
        > /dev/null 2> >(tee "$OUT/official_cost.log" >&2) \
        || say "official_cost failed or ran out of time (status $?): see $OUT/official_cost.log"
else
    say "5. skipped: ${left}s of the 10 minutes left, too few for bench/official_cost.py"
fi
say "done (placement check status $status); outputs in $OUT/"
exit $status
