#!/usr/bin/env bash
# The lesion-type study on photographs rendered at 768 px (preset gpu-lesions of training/experiments/presets.py;
# lesion-type filters matched by where they peak), seeds 10, 11 and 12, in one call on a machine with an NVIDIA
# GPU: about 3-4 h of the 2-core CPU. Never run on a GPU yet, so its time there is not known; run it with the
# longest limit the machine allows. The study resumes in the
# same folder, so a second call on the same (still warm) machine goes on where the first stopped.
#
# Needs what gpu_run.sh needs (its wheels in .whl/). The study folder (cohorts, models, ~2 GB) stays on the
# machine in $STUDY (default /tmp/study-$PRESET); its report and metric documents are copied to $OUT (default
# out/gpu-study): results.md, results.json, metrics/, figures/, study.log, and gpu_env.txt. PRESET, SEEDS and
# DEVICE override the study for a check on a CPU (PRESET=tiny SEEDS=0 DEVICE=cpu: a minute).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-$PWD/out/gpu-study}"
PRESET="${PRESET:-gpu-lesions}"
STUDY="${STUDY:-/tmp/study-$PRESET}"
SEEDS="${SEEDS:-10 11 12}"
DEVICE="${DEVICE:-cuda}"
LIMIT_S="${LIMIT_S:-500}"  # leaves the wheels' install and the copy-back inside a 600-s call
mkdir -p "$OUT" "$STUDY"
source benchmarks/gpu_env.sh

keep() {  # what the study has written so far, whether it finished or was stopped
    for item in results.md results.json metrics figures; do
        [ -e "$STUDY/$item" ] && cp -r "$STUDY/$item" "$OUT/"
    done
}
trap keep EXIT

seed_args=()
for s in $SEEDS; do seed_args+=(--seed "$s"); done
# SIGINT first, SIGKILL 30 s later: finished cohorts, models and documents stay in $STUDY for a second call.
timeout -k 30 --signal=INT "$LIMIT_S" \
    python3 -m training.experiments --preset "$PRESET" --out "$STUDY" --device "$DEVICE" "${seed_args[@]}" \
    2>&1 | tee "$OUT/study.log"
status=${PIPESTATUS[0]}
echo "gpu_study.sh: study exit status $status; report in $OUT (124 or 137: stopped at ${LIMIT_S} s, call again)"
exit "$status"
