#!/usr/bin/env bash
# The shipped checkpoint's whole recipe, measured honestly:
#   - one run per BraTS case with that case held out (leave-one-patient-out of the whole joint
#     recipe; each run also scores the other datasets' validation splits), and
#   - one run on every split of every dataset: the checkpoint to ship.
# All runs start together (one GPU takes them side by side; on a CPU, run fewer at a time).
#
#   bash scripts/pretrain_cv.sh DATA OUT [MINUTES] [DEVICE]
#
# DATA is a folder laid out like ../shared/data; OUT gets one folder per run (its checkpoint,
# model card and log). Then `python main.py cv-card OUT/holdout_* --model-dir OUT/all` writes
# the held-out figures into the shipped run's model card.
set -euo pipefail
data=${1:?usage: pretrain_cv.sh DATA OUT [MINUTES] [DEVICE]}
out=${2:?usage: pretrain_cv.sh DATA OUT [MINUTES] [DEVICE]}
minutes=${3:-80}
device=${4:-cpu}
steps=${STEPS:-20000}
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python}
export PYTHONPATH="$here/lib:$here${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-3}
mkdir -p "$out"
cases=$(cd "$data/brats2013" && for d in */; do [ -e "$d/OTMultiClass.nii.gz" ] && echo "${d%/}"; done)
pids=()
for case in $cases; do
  mkdir -p "$out/holdout_$case"
  "$python" "$here/main.py" -v pretrain --data "$data" --model-dir "$out/holdout_$case" --minutes "$minutes" \
    --steps "$steps" --device "$device" --no-progress --hold-out "brats:$case" >"$out/holdout_$case/log.txt" 2>&1 &
  pids+=($!)
done
mkdir -p "$out/all"
"$python" "$here/main.py" -v pretrain --data "$data" --model-dir "$out/all" --minutes "$minutes" \
  --steps "$steps" --device "$device" --no-progress --all-splits >"$out/all/log.txt" 2>&1 &
pids+=($!)
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=$((failed + 1)); done
for run in "$out"/holdout_* "$out/all"; do echo "== $run"; grep -v -i nvimagecodec "$run/log.txt" | tail -6; done
exit "$failed"
