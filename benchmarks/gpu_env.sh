# Sourced by the GPU scripts (gpu_run.sh, gpu_study.sh) from the repository root: installs the wheels in .whl/
# into /tmp/site, puts them and the source tree on PYTHONPATH, and writes nvidia-smi and the versions to
# $OUT/gpu_env.txt. Nothing is fetched.
if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "$(basename "$0"): no wheels in .whl/ (benchmarks/README.md says which to download)" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="/tmp/site:$PWD"
export PYTHONUNBUFFERED=1

{
    nvidia-smi
    python3 - <<'PY'
import platform

import monai
import numpy
import torch

gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, bf16 {bf16}")
print(f"monai {monai.__version__}, numpy {numpy.__version__}, GPU {gpu}")
PY
} 2>&1 | tee "$OUT/gpu_env.txt"
