#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md's "Speed" section, on a CUDA machine whose python3 already has torch, timm,
# lightning, scikit-learn and OpenCV; the other wheels come from ../shared/tools/gpu-wheels.sh (in .whl/).
#   bash scripts/gpu_check.sh OUT_DIR [STEP ...]      steps: default_cold bench_lite0 bench_senet warm_gpu thesis_heads
# Writes OUT_DIR/gpu.log and the benchmark JSON files; each step is timed on its own and a failing step does
# not stop the next.
set -u
out=${1:-/tmp/gpu-check}
shift || true
steps=${*:-default_cold bench_lite0 bench_senet warm_gpu thesis_heads}
mkdir -p "$out"
exec > >(tee "$out/gpu.log") 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 LEUKEXP_ROOT=/tmp/gpu-root COLUMNS=160
mkdir -p "$LEUKEXP_ROOT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
step() {
  local name=$1 t0 code; shift; echo "=== $name: $*"; t0=$(date +%s%N)
  "$@"; code=$?; echo "=== $name: exit $code in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}
peak() {
  python3 -c 'import resource,subprocess,sys; r=subprocess.run(sys.argv[1:]).returncode
print("peak RSS of the job: %.0f MB" % (resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024)); sys.exit(r)' "$@"
}
bench() { python3 scripts/benchmark.py --root "$LEUKEXP_ROOT" --raw-seconds 3 "$@"; }
# the synthetic images, generated before anything is timed
step generate python3 -c "from leukexp.data.synthetic import SyntheticSource
SyntheticSource(cache_dir='$LEUKEXP_ROOT/cache/synthetic').prepare()"
for s in $steps; do
  case $s in
    # the default study run with a cold feature cache, the head on the GPU: end to end
    default_cold) rm -rf "$LEUKEXP_ROOT/cache/features"; step default_cold peak python3 -m leukexp.train trainer=gpu ;;
    # raw forward vs extraction: EfficientNet-Lite0 in fp32 and bf16
    bench_lite0) step bench_lite0 bench --json "$out/bench_lite0.json" --only raw extraction
                 step bench_lite0_bf16 bench --json "$out/bench_lite0_bf16.json" --precision bf16 --only raw extraction ;;
    # SENet-154 (random weights) in bf16: the extraction-vs-raw target
    bench_senet) step bench_senet bench --json "$out/bench_senet154.json" --model senet154 --pretrained false \
                   --precision bf16 --only raw extraction ;;
    # warm jobs with the head on the GPU
    warm_gpu) step warm_gpu bench --json "$out/bench_warm_gpu.json" --only jobs --heads mlp1 mlp3 svm -- trainer=gpu ;;
    # the thesis_heads study (SENet-154 x 4 heads x 5 folds), cold cache, end to end
    thesis_heads) rm -rf "$LEUKEXP_ROOT/cache/features" "$LEUKEXP_ROOT/mlruns"
                  step thesis_heads peak python3 -m leukexp.train -m experiment=thesis_heads model.pretrained=false \
                    trainer=gpu ;;
  esac
done
