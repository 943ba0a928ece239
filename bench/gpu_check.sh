#!/usr/bin/env bash
# The GPU check: a prepared script for a lent GPU machine, under five minutes, that writes its
# figures to docs/gpu_check.md (or $DAB_GPU_CHECK_OUT):
#
#   1. one Signum-Dense T=10 training step (batch 1024): the authors' model, ours eager, ours
#      compiled (torch.compile default) and with CUDA graphs (reduce-overhead), in alternating
#      rounds (bench/dab_overhead.py --device cuda);
#   2. stacked seeds: R = 1, 5, 10 seeds as one vmapped model against R separate models
#      (bench/stacked_seeds.py --device cuda);
#   3. trials packed 1, 2, 4 to the GPU, in as many processes (bench/trials_packed.py).
#
# Usage, from the repository root on the GPU machine:
#   bash bench/gpu_check.sh                          # needs CUDA; exits 2 without it
#   DAB_GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh # the dry run: the same steps on the CPU,
#                                                    # tiny sizes, to a temporary file
# The GPU image has PyTorch but not this project's other needs (pydantic): carry them as wheels
# in .whl (see /work/.library/device/README.md: pip download --python-version 3.12 ...
# pydantic pydantic-core annotated-types typing-inspection); the script installs what .whl holds.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEVICE=${DAB_GPU_CHECK_DEVICE:-cuda}
case "$DEVICE" in
  cuda) OUT_MD=${DAB_GPU_CHECK_OUT:-docs/gpu_check.md}
        STEP_ARGS=(--steps 200 --rounds 5 --warmup 30)
        STACK_ARGS=(--steps 50 --rounds 5)
        PACK_ARGS=(--steps 300 --per-device 1 2 4) ;;
  cpu)  OUT_MD=${DAB_GPU_CHECK_OUT:-$(mktemp -t gpu_check.XXXXXX.md)}
        STEP_ARGS=(--steps 3 --rounds 2 --warmup 1 --seq-len 4)
        STACK_ARGS=(--seeds 1 2 --rounds 2 --steps 2 --warmup 1 --seq-len 4 --batches 64)
        PACK_ARGS=(--steps 3 --warmup 1 --batch 64 --seq-len 4 --per-device 1 2) ;;
  *)    echo "gpu_check: DAB_GPU_CHECK_DEVICE must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;;
esac

if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! "$PY" -c "import pydantic, torch" 2>/dev/null; then
  echo "gpu_check: $PY cannot import torch and pydantic; carry pydantic's wheels in .whl (see this script's header)" >&2
  exit 2
fi
if [ "$DEVICE" = cuda ] && ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False): this check measures a GPU." >&2
  echo "gpu_check: for the dry run on the CPU: DAB_GPU_CHECK_DEVICE=cpu bash bench/gpu_check.sh" >&2
  exit 2
fi

tmp="$OUT_MD.partial"
{
  echo "# GPU check (bench/gpu_check.sh)"
  echo
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $("$PY" -c "import torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'the CPU (dry run)')"),"
  echo "torch $("$PY" -c 'import torch; print(torch.__version__)'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)."
  echo
  echo "## 1. One training step: eager, compiled, CUDA graphs"
  echo
  echo '```'
  "$PY" bench/dab_overhead.py --device "$DEVICE" --no-demo-loop "${STEP_ARGS[@]}"
  echo '```'
  echo
  echo "## 2. Stacked seeds (one vmapped model) against separate models"
  echo
  echo '```'
  "$PY" bench/stacked_seeds.py --device "$DEVICE" "${STACK_ARGS[@]}"
  echo '```'
  echo
  echo "## 3. Trials packed onto the device"
  echo
  "$PY" bench/trials_packed.py --device "$DEVICE" "${PACK_ARGS[@]}"
} >"$tmp"
mv "$tmp" "$OUT_MD"
echo "gpu_check: wrote $OUT_MD"
