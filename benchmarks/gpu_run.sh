#!/usr/bin/env bash
# The GPU half of the performance figures, in one short run on a machine with an NVIDIA GPU.
#
# Run from anywhere in a source checkout, on a machine that has python3 with torch (a CUDA build), numpy,
# scipy, scikit-image, pillow, matplotlib, tifffile and psutil, and the wheels benchmarks/README.md lists in
# .whl/ (MONAI and pydicom). Nothing is fetched; the project runs from the source tree, not installed.
#
# Writes into $OUT (default: out/gpu): gpu_env.txt (nvidia-smi, versions), gpu_bench.log (the printed figures)
# and gpu_bench.json (figure name -> value, null when missing; rewritten after each figure group, so a run
# stopped by the time limit keeps what it measured). About 3 to 4 minutes on an H100; the benchmark is
# stopped after 330 s whatever happens, so the whole script ends within about 6 minutes.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT="${OUT:-$PWD/out/gpu}"
mkdir -p "$OUT"
source benchmarks/gpu_env.sh

# Groups in order of importance, so a run cut short loses the least. SIGINT first (the harness stops
# cleanly and the JSON keeps the finished groups), SIGKILL 20 s later.
timeout -k 20 --signal=INT 330 \
    python3 -m benchmarks --device cuda \
        --only train_step memory materialised scores explain throughput batch \
        --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.log"
status=${PIPESTATUS[0]}
echo "gpu_run.sh: benchmark exit status $status; figures in $OUT/gpu_bench.json"
exit "$status"
