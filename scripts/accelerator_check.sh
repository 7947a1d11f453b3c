#!/usr/bin/env bash
# The device run of scripts/accelerator_check.py (docs/benchmark.md, "On an accelerator"), from the
# repository root of the GPU machine's copy of the working tree:
#
#   bash scripts/accelerator_check.sh [OUT_DIR] [more accelerator_check.py flags]
#
# Runs every step into OUT_DIR (default /tmp/accel) with the AV-MNIST raw files from $MMLEARN_AVMNIST_DIR
# (default shared/data/avmnist) and the wheels in .whl, then, where $OUT is set (the device tool's folder
# of files that come back), packs OUT_DIR into $OUT/accel.tgz (without prepared datasets, checkpoints
# and TensorBoard files) and copies summary.md and steps.json beside it. Exits with the check's status.
set -u
out=${1:-/tmp/accel}
shift || true
export PYTHONUNBUFFERED=1
python3 scripts/accelerator_check.py --out="$out" --avmnist_dir="${MMLEARN_AVMNIST_DIR:-shared/data/avmnist}" \
  --wheels=.whl "$@"
status=$?
if [ -n "${OUT:-}" ] && [ -d "$out" ]; then
  tar czf "$OUT/accel.tgz" --exclude=tfds --exclude=checkpoints --exclude=tensorboard \
    -C "$(dirname "$out")" "$(basename "$out")"
  cp "$out/summary.md" "$out/steps.json" "$OUT/" 2>/dev/null
fi
exit $status
