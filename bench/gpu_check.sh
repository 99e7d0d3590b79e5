#!/usr/bin/env bash
# The CUDA checks and GPU benchmarks in one run, on a machine with a GPU and no network.
#
#   bench/gpu_check.sh --prepare DIR   here, with a package index: DIR/whl (the wheels the GPU
#                                      image lacked: trl, liger-kernel, bitsandbytes, datasets,
#                                      pydantic, ...), DIR/models/smollm2 (the default model's config
#                                      and tokenizer: its weights stay here) and DIR/repo (this
#                                      checkout's code, with this script); 64 MiB at most
#   bash DIR/repo/bench/gpu_check.sh    there: everything below, within GPU_CHECK_BUDGET seconds
#   bench/gpu_check.sh --dry-run       on CPU: the same stages on tiny sizes (the plumbing, not the numbers)
#
# Stages, each under its own time limit, each writing as it goes to $OUT (or --out DIR): env.txt,
# log.txt, trials.jsonl (one line per benchmark trial), results.jsonl (one summary per stage),
# profile.txt (top kernels of the profiled sides), pytest.txt:
#   1. the test suite's CUDA tests (pytest -m cuda): bf16 step, packed = padded, fused loss
#      gradients, QLoRA step, merge parity, generation, one host sync per step
#   2. tunery vs TRL tuned (padding-free, Liger) vs TRL with Liger on padded rows: a random-weight
#      ~1B Llama (Llama 3.2 1B's shape, the default model's tokenizer), bf16, LoRA r=16 all-linear,
#      chats of 512-2048 tokens packed (max_length 2048), 8 per step; tunery profiled
#   3. the same tunery run with PyTorch's own choice of attention kernels (cuDNN first on Hopper)
#   4. QLoRA against LoRA on the same 1B job, without and with activation checkpointing
#   5. tunery vs TRL tuned on the default model's architecture (random weights)
#   6. QLoRA against LoRA at 2 chats a step (checkpointing); then TRL's defaults on both models
set -u -o pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=run
OUTDIR="${OUT:-/tmp/gpu-check-out}"
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) MODE=prepare; DEST="$2"; shift ;;
    --dry-run) MODE=dry ;;
    --out) OUTDIR="$2"; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

# ---------------------------------------------------------------------------------------------
if [ "$MODE" = prepare ]; then
  PY="${PYTHON:-python3}"
  mkdir -p "$DEST/whl" "$DEST/models" "$DEST/repo"
  plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  # What the GPU image lacked (its python is 3.12; torch, transformers, peft, accelerate, triton are there).
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
    -d "$DEST/whl" trl==1.16.0 liger-kernel==0.8.5 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection bitsandbytes==0.50.2 || exit 1
  # bitsandbytes ships a library per CUDA and ROCm version (120 MB): keep CUDA 13's.
  "$PY" - "$DEST/whl" <<'EOF' || exit 1
import base64, hashlib, pathlib, sys, zipfile
for whl in pathlib.Path(sys.argv[1]).glob("bitsandbytes-*.whl"):
    keep = lambda n: not (n.endswith(".so") and "cuda13" not in n)
    src = zipfile.ZipFile(whl)
    items = {n: src.read(n) for n in src.namelist() if keep(n)}
    record = next(n for n in items if n.endswith("RECORD"))
    lines = []
    for n, data in items.items():
        if n != record:
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            lines.append(f"{n},sha256={digest},{len(data)}")
    items[record] = ("\n".join(lines + [f"{record},,"]) + "\n").encode()
    src.close()
    with zipfile.ZipFile(whl, "w", zipfile.ZIP_DEFLATED) as out:
        for n, data in items.items():
            out.writestr(n, data)
EOF
  # The default model's config and tokenizer (tunery imports its weights from a GGUF file too
  # large to carry): the benchmarks build its architecture with random weights there.
  "$PY" - "$DEST/models/smollm2" <<'EOF' || exit 1
import shutil, sys
from pathlib import Path
from tunery.models import resolve_model
src, dest = resolve_model("default").path, Path(sys.argv[1])
dest.mkdir(parents=True, exist_ok=True)
for f in src.iterdir():
    if f.suffix in (".json", ".jinja") and not f.name.startswith("tunery"):
        shutil.copy(f, dest / f.name)
EOF
  rm -rf "$DEST/repo" && mkdir -p "$DEST/repo"
  (cd "$HERE" && tar --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml src tests bench examples) \
    | tar -xf - -C "$DEST/repo"
  du -sh "$DEST"
  exit 0
fi

# ---------------------------------------------------------------------------------------------
mkdir -p "$OUTDIR"
LOG="$OUTDIR/log.txt"
START=$(date +%s)
BUDGET="${GPU_CHECK_BUDGET:-420}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export TUNERY_HOME="${TUNERY_HOME:-/tmp/gpu-check-home}"
say() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
# stage NAME MAX_SECONDS CMD...: runs CMD under min(MAX, what is left less a reserve)
stage() {
  local name="$1" max="$2"; shift 2
  local t; t=$(left); t=$((t - 10)); [ "$t" -gt "$max" ] && t="$max"
  if [ "$t" -lt 20 ]; then say "SKIP $name: ${t}s left"; return 0; fi
  say "BEGIN $name (limit ${t}s)"
  timeout --kill-after=5 "$t" "$@" >>"$LOG" 2>&1
  local rc=$?
  say "END $name rc=$rc$([ $rc = 124 ] && echo ' (timed out)')"
  return 0
}

PY="${PYTHON:-python3}"
{ "$PY" -V; nvidia-smi 2>&1 | head -15; "$PY" -m pip list 2>/dev/null \
    | grep -i -E 'torch|transformers|peft|accelerate|trl|liger|bitsandbytes|datasets|triton|pydantic|flash|numpy|pyarrow'; } \
  > "$OUTDIR/env.txt" 2>&1
cat "$OUTDIR/env.txt" | tee -a "$LOG"

WHL="$HERE/../whl"
if [ -d "$WHL" ] && ls "$WHL"/*.whl >/dev/null 2>&1; then
  # only what the image lacks: its own torch stack stays
  missing=()
  for w in "$WHL"/*.whl; do
    mod=$(basename "$w" | cut -d- -f1 | tr 'A-Z' 'a-z')
    "$PY" -c "import $mod" 2>/dev/null || missing+=("$w")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${#missing[@]} wheels: $(for m in "${missing[@]}"; do basename "$m" | cut -d- -f1-2; done | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu-site "${missing[@]}" >>"$LOG" 2>&1 \
      || say "pip install failed"
    export PYTHONPATH="/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
export PYTHONPATH="$HERE/src${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import tunery, trl, datasets; print('tunery from', tunery.__file__, '| trl', trl.__version__)" 2>&1 | tee -a "$LOG"
"$PY" -c "import bitsandbytes, liger_kernel; print('bitsandbytes', bitsandbytes.__version__)" 2>&1 | tail -1 | tee -a "$LOG"

SMOL="$HERE/../models/smollm2"
[ -f "$SMOL/config.json" ] || SMOL=default
cd "$HERE"
COMPARE=("$PY" bench/compare_trl.py --json --rounds 1 --trials-jsonl "$OUTDIR/trials.jsonl"
         --results-jsonl "$OUTDIR/results.jsonl" --profile-out "$OUTDIR/profile.txt")

if [ "$MODE" = dry ]; then  # tiny sizes on CPU: every stage's plumbing
  BIG=(--arch llama-mini --data synthetic --lengths 64-256 --max-length 256 --batch-size 4 --steps 3 --default-steps 2
       --precision fp32 --no-val --workdir /tmp/gpu-check-1b)
  SMALL=(--arch llama-mini --data synthetic --lengths 64-256 --max-length 256 --batch-size 4 --steps 3 --default-steps 2
         --precision fp32 --no-val --workdir /tmp/gpu-check-small)
  QSIDES=tunery_gc  # QLoRA needs CUDA
  rm -rf /tmp/gpu-check-1b /tmp/gpu-check-small
else
  BIG=(--arch llama-1b --data synthetic --lengths 512-2048 --max-length 2048 --batch-size 8 --steps 8 --default-steps 4
       --no-val --workdir /tmp/gpu-check-1b)
  SMALL=(--random-weights --data synthetic --lengths 512-2048 --max-length 2048 --batch-size 8 --steps 8 --default-steps 4
         --no-val --workdir /tmp/gpu-check-small)
  QSIDES=tunery_qlora,tunery_gc,tunery_qlora_gc
fi

stage pytest-cuda 130 bash -c "'$PY' -m pytest -q -rs -rP -m cuda -p no:cacheprovider tests/test_cuda.py > '$OUTDIR/pytest.txt' 2>&1"
grep -E "passed|failed|skipped|error|syncs per" "$OUTDIR/pytest.txt" | tail -5 | tee -a "$LOG"
# In order of what matters most: a stage that would start with under 20 s left is skipped.
stage trl-1b 150 "${COMPARE[@]}" --tag 1b --model "$SMOL" "${BIG[@]}" --sides tunery,trl_tuned,trl_padded --profile tunery
# packed attention with PyTorch's own choice of kernels (cuDNN first on Hopper) against tunery's
stage sdpa-auto-1b 50 env TUNERY_CUDA_SDPA=auto "${COMPARE[@]}" --tag sdpa-auto-1b --model "$SMOL" "${BIG[@]}" --sides tunery
stage qlora-1b 100 "${COMPARE[@]}" --tag qlora-1b --model "$SMOL" "${BIG[@]}" --sides "$QSIDES" --profile "${QSIDES%%,*}"
stage trl-default-model 80 "${COMPARE[@]}" --tag default-model --model "$SMOL" "${SMALL[@]}" --sides tunery,trl_tuned
# QLoRA where the weights weigh more than the activations: 2 examples a step, checkpointing
stage qlora-1b-b2 60 "${COMPARE[@]}" --tag qlora-1b-b2 --model "$SMOL" "${BIG[@]}" --batch-size 2 --sides "${QSIDES#*,}"
stage trl-defaults 60 "${COMPARE[@]}" --tag trl-defaults-1b --model "$SMOL" "${BIG[@]}" --sides trl_default
stage trl-defaults 40 "${COMPARE[@]}" --tag trl-defaults-default-model --model "$SMOL" "${SMALL[@]}" --sides trl_default
say "done in $(($(date +%s) - START))s"
