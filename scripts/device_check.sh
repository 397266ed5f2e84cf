#!/bin/bash
# The GPU checks of views made on the device, as one command on a lent GPU machine (see docs/scaling-out.md, "Outgrowing one
# machine"): the tensor-view tests on CUDA, then the benchmark's raw bf16 forward against cold extraction with views
# made on the device and on the CPU workers, for EfficientNet-Lite0 (pretrained) and SENet-154 (random weights),
# then a profile of the device path's main process. Wheels first: bash ../shared/tools/gpu-wheels.sh (into .whl/).
# Writes its logs under $OUT (or ./device-out).
set -u
OUT=${OUT:-device-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
IMAGES_PER_CLASS=${IMAGES_PER_CLASS:-600}
python3 - "$IMAGES_PER_CLASS" <<'EOF'
"""Synthetic smears for the benchmark, generated in parallel (the data config generates them one by one)."""
import sys
from multiprocessing import Pool
from pathlib import Path

import cv2

from leukexp.data.synthetic import STUDY_COUNTS, generate_image

def write(job):
    root, label, index = job
    path = Path(root) / label / f"{label}_{index:04d}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(generate_image(label, index), cv2.COLOR_RGB2BGR))

per_class = int(sys.argv[1])
jobs = [(root, label, index) for root, count in (("/tmp/gpu-data", per_class), ("/tmp/gpu-small", 100))
        for label in STUDY_COUNTS for index in range(count)]
with Pool(16) as pool:
    pool.map(write, jobs, chunksize=16)
print(f"{len(jobs)} images written")
EOF
if [ "${PROFILE_ONLY:-0}" = 1 ]; then
  python3 scripts/device_profile.py /tmp/b-profile /tmp/gpu-small 2>&1 | grep -v -E "UserWarning|fetch_version" \
    | tee "$OUT/profile.txt"
  exit
fi
timeout 240 python3 -m pytest -q -p no:cacheprovider -p no:randomly tests/data/test_tensor_views.py 2>&1 | tail -5 | tee "$OUT/tests.txt"
python3 - <<'EOF' 2>&1 | tee "$OUT/cuda_equal.txt"
"""The device's views equal the CPU tensor path's (the same math) within float error."""
import numpy as np, torch
from hydra.utils import instantiate
from leukexp.config.compose import load_option
from leukexp.data.tensor_views import TensorViews
views = TensorViews(instantiate(load_option("augmentation", "paper", ["seed=42"]), _convert_="all"))
rng = np.random.default_rng(0)
image = torch.from_numpy(rng.integers(0, 256, (1, 224, 224, 3), dtype=np.uint8)).expand(33, -1, -1, -1)
plan = [torch.from_numpy(a) for a in views.plan(np.arange(33), "key", 224, 224)]
cpu = views.make(image, *plan)
gpu = views.make(image.cuda(), *plan).cpu()
print("max |cuda - cpu| over 33 views:", float((gpu - cpu).abs().max()))
EOF
bench() { python3 scripts/benchmark.py --only raw extraction --precision bf16 --raw-seconds 5 "$@"; }
bench --root /tmp/b-lite0 --views device,cpu data=folder data.root=/tmp/gpu-data 2>&1 \
  | grep -v "benchmark pass" | tee "$OUT/lite0.txt"
bench --root /tmp/b-senet --model senet154 --pretrained false --views device,cpu data=folder data.root=/tmp/gpu-small \
  2>&1 | grep -v "benchmark pass" | tee "$OUT/senet154.txt"
python3 -m cProfile -o /tmp/device.prof scripts/benchmark.py --root /tmp/b-prof --only extraction --precision bf16 \
  --views device data=folder data.root=/tmp/gpu-data > /dev/null 2>&1
python3 -c "import pstats; pstats.Stats('/tmp/device.prof').sort_stats('tottime').print_stats(25)" \
  | tail -40 > "$OUT/profile.txt"
head -c 4000 "$OUT/profile.txt"
