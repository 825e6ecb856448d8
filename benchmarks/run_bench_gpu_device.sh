#!/usr/bin/env bash
# bench_gpu.py's full matrix on a lent GPU machine, in one command.
#
# The GPU machine has torch and numpy but transformers 5.17, no PyAV and no `make setup`; nothing
# can be fetched there. So, two steps:
#
# 1. Here (network, PyAV):   bash benchmarks/run_bench_gpu_device.sh --prepare
#    fills out/bench_gpu_carry/ (git-ignored): wheels/, every wheel `import transformers` needs at
#    the versions installed here (benchmarks/carry_wheels.py: transformers, huggingface_hub and the
#    rest of their closure; compiled ones for the machine's Python 3.12; not torch or numpy), the
#    first 16 frames of 02_cups.mp4 (frames.npz, ~18 MB) and the commit being measured
#    (commit.txt). Well under the device tool's 64 MiB (du prints it).
# 2. There, with the device tool:
#       run(command="bash benchmarks/run_bench_gpu_device.sh", carry=["out/bench_gpu_carry"], timeout_s=420)
#    The JSON lines come back in $OUT/bench_gpu.jsonl, stderr in $OUT/bench_gpu.log and the card
#    in $OUT/nvidia-smi.txt. The carried wheels are installed first and `import transformers` (with
#    SAM 3's video model) is checked before the run starts: a failing import stops it there, with
#    the error. The matrix gets a 250 s budget (figures not started by then print as skipped, 4
#    objects first) inside a 320 s timeout; extra arguments go to bench_gpu.py.
set -euo pipefail
cd "$(dirname "$0")/.."
CARRY=out/bench_gpu_carry

if [ "${1:-}" = "--prepare" ]; then
  PY=${PYTHON:-.venv/bin/python}
  mkdir -p "$CARRY"
  rm -rf "$CARRY"/wheels "$CARRY"/transformers-*.whl
  "$PY" -m benchmarks.carry_wheels "$CARRY/wheels" --python-version "${DEVICE_PYTHON:-3.12}"
  "$PY" -m benchmarks.bench_gpu --save-frames "$CARRY/frames.npz" --decode-frames 16
  commit=$(git rev-parse HEAD)
  git diff --quiet HEAD -- workers benchmarks || commit="$commit+uncommitted-changes"
  echo "$commit" > "$CARRY/commit.txt"
  du -sh "$CARRY"
  exit 0
fi

OUT=${OUT:-out/bench_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.txt" 2>&1 || true

if ls "$CARRY"/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/bench_site \
    "$CARRY"/wheels/*.whl
  export PYTHONPATH=/tmp/bench_site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "warning: no $CARRY/wheels/*.whl (run --prepare here first): using the machine's transformers" >&2
fi
# The import the run depends on, checked before it starts (a failure here used to print nothing).
if ! python3 -c 'import torch, transformers
from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoModel
print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available())' \
    > "$OUT/import.txt" 2>&1; then
  echo "import transformers failed with the carried wheels; not starting the run:" >&2
  cat "$OUT/import.txt" >&2
  exit 3
fi
tee -a "$OUT/nvidia-smi.txt" < "$OUT/import.txt"

args=(--budget-s 250 --out "$OUT/bench_gpu.jsonl")
[ -f "$CARRY/frames.npz" ] && args+=(--frames-file "$CARRY/frames.npz")
[ -f "$CARRY/commit.txt" ] && export SAM3V_BENCH_COMMIT="${SAM3V_BENCH_COMMIT:-$(cat "$CARRY/commit.txt")}"

status=0
timeout 320 python3 -m benchmarks.bench_gpu "${args[@]}" "$@" 2> >(tee "$OUT/bench_gpu.log" >&2) || status=$?
echo "bench_gpu exit $status; $(grep -c . "$OUT/bench_gpu.jsonl" 2>/dev/null || echo 0) figures in $OUT/bench_gpu.jsonl" >&2
exit $status
