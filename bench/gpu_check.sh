#!/usr/bin/env bash
# The GPU check: build the extension for this machine, run the CUDA/Triton equivalence tests, the benchmarks
# and a short Fashion-MNIST distillation + evaluation; write everything under $OUT.
#
#   bash bench/gpu_check.sh                 # on a machine with a GPU (step limits sum to 9 min; aim: under 8)
#   bash bench/gpu_check.sh --cpu-dry-run   # every step at toy size on CPU, to check the script itself
#
# Fashion-MNIST must travel with the working tree: `make carry-data` copies its IDX files into
# .carry/fashion-mnist (30 MB, git-ignored); carry `.carry` along. DATA=DIR points elsewhere.
# Files written to $OUT (flat, 8 at most): summary.md, build.log, tests.log, bench.log, bench.json (the
# benchmark table, as bench/results/<device>.json would hold it), distill.log, metrics.json, grid.png.
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
OUT=${OUT:-$(mktemp -d)}
DATA=${DATA:-.carry}
export UDD_FAST_DATA=$DATA UDD_FAST_BENCH_JSON=$OUT/bench.json PYTHONUNBUFFERED=1 CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
mkdir -p "$OUT"
summary="$OUT/summary.md"

if [ $DRY = 1 ]; then
    PY=${PY:-.venv/bin/python}
    export UDD_FAST_CPU_ONLY=1
    TESTS="tests/test_distiller.py tests/test_losses.py -k batched_step_equals"
    BENCH="-k fmnist-ipc1-w32-loop-fp32"
    DISTILL="--outer 1 --inner 2 --width 16 --epochs 2 --repeats 1"
else
    PY=${PY:-python3}
    # build for this GPU only: one arch compiles in about a minute
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
    TESTS="tests/test_crop_resize_ext.py tests/test_window_pool.py tests/test_jitter_score.py tests/test_jitter_copies.py
           tests/test_ops.py tests/test_distiller.py tests/test_losses.py"
    BENCH=""
    DISTILL="--outer 2 --inner 100 --repeats 3"
fi
[ -d "$DATA/fashion-mnist" ] || { echo "no Fashion-MNIST under $DATA/fashion-mnist: run 'make carry-data'"; exit 2; }

status=0
step() {  # step NAME TIMEOUT_S COMMAND... : run with a time limit, log to $OUT/NAME.log, record the outcome
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "| $name | $([ $rc = 0 ] && echo ok || echo "FAILED (exit $rc)") | $((SECONDS - t0)) s |" >>"$summary"
    [ $rc = 0 ] || status=1
    tail -3 "$OUT/$name.log"
}

{
    echo "# GPU check $(date -u +%FT%TZ)"
    echo
    $PY -c "import torch, triton; print(f'torch {torch.__version__}, triton {triton.__version__}, cuda {torch.version.cuda}, '
            f'device {torch.cuda.get_device_name() if torch.cuda.is_available() else \"cpu\"}')"
    echo
    echo "| step | result | wall |"
    echo "|---|---|---|"
} >"$summary"

step build 120 $PY -m pip install -q -e . --no-build-isolation --no-deps
step tests 180 $PY -m pytest $TESTS -q -x -p no:cacheprovider
step bench 120 $PY -m pytest bench --benchmark-only -q -p no:cacheprovider $BENCH
run=$(mktemp -d)
step distill 120 $PY -m udd_fast distill --dataset fashion-mnist --ipc 1 --preset paper $DISTILL \
    --out "$run" --evaluate --baseline --quiet

cp "$run/metrics.json" "$run/grid.png" "$OUT/" 2>/dev/null
{
    echo
    echo '```'
    sed -n '/ms per synthetic image/,/^$/p' "$OUT/bench.log"
    grep -A4 -E "^distilled|^accuracy" "$OUT/distill.log"
    echo '```'
} >>"$summary"
cat "$summary"
exit $status
