#!/usr/bin/env bash
# The GPU check, one run sized for 6 minutes of a lent GPU machine including its start (about 1.5 min):
# versions, a CUDA build of the extension for this GPU, the CUDA/Triton equivalence tests, the GPU benchmark
# rows and a short paper-preset Fashion-MNIST distillation with evaluation. Results go to $OUT.
#
#   OUT=DIR bash bench/gpu_check.sh         # on the GPU machine, with the python3 found there (PY=... to choose)
#   bash bench/gpu_check.sh --cpu-dry-run   # every step at toy size on CPU, to check the script itself
#
# Stops at once, non-zero, when python has no torch, torch has no CUDA, no CUDA device is visible, or nvcc is
# not under CUDA_HOME (exit 3), or when the build fails or registers no CUDA kernel for crop_resize (exit 4).
# Otherwise every step runs under its own time limit, and the exit status says whether all of them passed.
#
# Time limits on the GPU, seconds (each also cut to what is left of BUDGET=260, so the script ends within
# 4.3 minutes; with the machine's start and the transfers, about 6 minutes of device time at worst):
#   preflight 15 | build 65 (the machine's arch only) | tests 40 (the five files at once, each its own pytest)
#   | bench 95 (one file at a time: crop_resize 15, kernels 20, policies 20, step 20, real-batch supply 20)
#   | distill 25 | estimate 20 (the paper's CIFAR-10 run at IPC=1 and 10: a few timed steps each, on random
#   images of CIFAR-10's shape, projected to 2,000 x 100 steps: estimate.json)
# The dry run has longer limits: a 2-core machine builds and interprets Triton far slower.
#
# Fashion-MNIST must travel with the working tree: `make carry-data` copies its IDX files into
# .carry/fashion-mnist (30 MB, git-ignored); carry `.carry` along. DATA=DIR points elsewhere.
# Files written to $OUT (at most 8 come back from a lent machine): summary.md; bench.json (every GPU row, as
# bench/results/<device>.json holds them); metrics.json and grid.png of the distillation; estimate.json;
# logs.tar.gz (each step's log and each bench file's own JSON). They are rewritten as the run goes: a run stopped early keeps
# what it finished.
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--cpu-dry-run" ] && DRY=1
OUT=${OUT:-$(mktemp -d)}
DATA=${DATA:-.carry}
WORK=$(mktemp -d)
mkdir -p "$OUT" "$WORK/logs" "$WORK/bench-json"
export UDD_FAST_DATA=$DATA UDD_BENCH_JSON_DIR=$WORK/bench-json UDD_FAST_BENCH_JSON=$WORK/bench-session.json
export PYTHONUNBUFFERED=1

# Test files (each its own pytest, all at once) with their -k selection; bench files (one at a time) with
# their limit and -k selection.
TESTS=("tests/test_crop_resize_ext.py|cuda" "tests/test_window_pool.py|" "tests/test_jitter_score.py|"
       "tests/test_jitter_copies.py|" "tests/test_ops.py|")
if [ $DRY = 1 ]; then
    PY=${PY:-.venv/bin/python}
    export UDD_FAST_CPU_ONLY=1
    NEED=cpu
    BUDGET=${BUDGET:-1200}
    L_PRE=30 L_BUILD=400 L_TESTS=240 L_DISTILL=240 L_ESTIMATE=240
    BENCH=("bench/test_bench_crop_resize.py|60|fmnist28-B10-extension"
           "bench/test_bench_kernels.py|60|cifar-convnet3-4x4 and reference"
           "bench/test_bench_policies.py|60|cifar-convnet3 and activation and reference"
           "bench/test_bench_step.py|120|fmnist-ipc1-w32 and loop and fp32"
           "bench/test_bench_supply.py|120|cache-mmap")
    DISTILL="--outer 1 --inner 2 --width 16 --epochs 2 --repeats 1 --protocols plain"
    ESTIMATE="--steps 1 --width 8"
else
    PY=${PY:-python3}
    NEED=cuda
    BUDGET=${BUDGET:-260}
    L_PRE=15 L_BUILD=65 L_TESTS=40 L_DISTILL=25 L_ESTIMATE=20
    BENCH=("bench/test_bench_crop_resize.py|15|cuda" "bench/test_bench_kernels.py|20|"
           "bench/test_bench_policies.py|20|" "bench/test_bench_step.py|20|not torchrun"
           "bench/test_bench_supply.py|20|cache or resident or demand")
    DISTILL="--outer 1 --inner 20 --epochs 50 --repeats 1 --protocols paper"
    ESTIMATE="--steps 3"
fi
deadline=$((SECONDS + BUDGET))
status=0
found="" built="" test_rows=()

# summary.md is rendered again after every step, from what is known so far.
render() {
    {
        echo "# GPU check $(date -u +%FT%TZ)$([ $DRY = 1 ] && echo ' (CPU dry run)')"
        echo
        echo "Found: ${found:-not yet}"
        [ -n "$built" ] && echo && echo "Build: $built"
        echo
        echo "| step | result | wall | limit |"
        echo "|---|---|---|---|"
        cat "$WORK/steps.md" 2>/dev/null
        if [ ${#test_rows[@]} -gt 0 ]; then
            echo
            echo "| test file | passed | failed | errors | skipped | result |"
            echo "|---|---|---|---|---|---|"
            printf '%s\n' "${test_rows[@]}"
        fi
        if [ -f "$OUT/bench.json" ]; then
            echo
            echo "Benchmarks: ms per synthetic image (x speed-up against the slowest of its group; GB/s where counted)"
            echo '```'
            "$PY" - "$OUT/bench.json" <<'EOF'
import json, sys
for group, rows in json.load(open(sys.argv[1]))["groups"].items():
    print(group)
    for name, r in rows.items():
        extra = "".join(f"  {r[k]:.1f} {unit}" for k, unit in (("gb_per_s", "GB/s"), ("images_per_s", "images/s"))
                        if k in r)
        print(f"    {name:55s} {r['ms_per_image']:10.4f} ms  x{r['speedup_vs_slowest']:.2f}{extra}")
EOF
            echo '```'
        fi
        if [ -f "$WORK/logs/estimate.log" ]; then
            echo
            echo "The paper's CIFAR-10 run here (distillation only):"
            echo '```'
            grep "h of distillation" "$WORK/logs/estimate.log" || tail -3 "$WORK/logs/estimate.log"
            echo '```'
        fi
        if [ -f "$WORK/logs/distill.log" ]; then
            echo
            echo "Distillation:"
            echo '```'
            grep -A4 -E "^distilled|^accuracy" "$WORK/logs/distill.log" || tail -5 "$WORK/logs/distill.log"
            echo '```'
        fi
    } >"$OUT/summary.md"
    tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs bench-json 2>/dev/null
}

finish() {
    [ -n "${2:-}" ] && echo "| stopped | $2 | | |" >>"$WORK/steps.md"
    render
    echo >>"$OUT/summary.md"
    echo "exit status $1$([ "$1" = 0 ] && echo ': every step passed')" >>"$OUT/summary.md"
    cat "$OUT/summary.md"
    exit "$1"
}

limit_of() { local l=$1 r=$((deadline - SECONDS)); [ "$r" -lt "$l" ] && l=$r; echo "$l"; }
outcome() { [ "$1" = 0 ] && echo ok || echo "FAILED (exit $1$([ "$1" = 124 ] && echo ', time limit'))"; }

# step NAME LIMIT CMD...: run under min(LIMIT, what is left of the budget), log to logs/NAME.log, one row.
step() {
    local name=$1 limit t0=$SECONDS rc
    limit=$(limit_of "$2")
    shift 2
    if [ "$limit" -lt 3 ]; then
        echo "| $name | SKIPPED (budget spent) | 0 s | 0 s |" >>"$WORK/steps.md"
        status=1
        return 1
    fi
    timeout -k 2 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
    rc=$?
    echo "| $name | $(outcome $rc) | $((SECONDS - t0)) s | $limit s |" >>"$WORK/steps.md"
    [ $rc = 0 ] || status=1
    render
    return $rc
}

# pytest's last line as "passed | failed | errors | skipped"
counts() {
    local line n out=""
    line=$(grep -E "[0-9]+ (passed|failed|errors?|skipped|deselected)|no tests ran" "$1" 2>/dev/null | tail -1)
    for word in passed failed error skipped; do
        n=$(grep -oE "[0-9]+ $word" <<<"$line" | cut -d' ' -f1)
        out+="${n:-0} | "
    done
    echo "${out% | }"
}

# --- preflight: versions; CUDA visible; nvcc under CUDA_HOME ----------------------------------------------
if [ -z "${CUDA_HOME:-}" ]; then
    nvcc_path=$(readlink -f "$(command -v nvcc 2>/dev/null || echo /nonexistent/bin/nvcc)")
    for d in /usr/local/cuda "$(dirname "$(dirname "$nvcc_path")")"; do
        [ -x "$d/bin/nvcc" ] && { export CUDA_HOME=$d; break; }
    done
fi
cat >"$WORK/preflight.py" <<'EOF'
import platform, sys
try:
    import torch
except ImportError as exc:
    print(f"FAIL: {sys.executable} has no torch ({exc})")
    sys.exit(3)

def version(name):
    try:
        return __import__(name).__version__
    except Exception as exc:  # reported here; the steps that need it fail on their own
        return f"missing ({type(exc).__name__})"

gpu = "none visible"
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    gpu = f"{p.name} (sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB)"
    print(f"ARCH={p.major}.{p.minor}")
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}, CUDA {torch.version.cuda}; "
      f"triton {version('triton')}; torchvision {version('torchvision')}; GPU {gpu}")
if sys.argv[1] == "cuda":
    if torch.version.cuda is None:
        print(f"FAIL: torch {torch.__version__} is built without CUDA")
        sys.exit(3)
    if not torch.cuda.is_available():
        print("FAIL: no CUDA device is visible (torch.cuda.is_available() is False): every CUDA test would skip")
        sys.exit(3)
EOF
step preflight $L_PRE "$PY" "$WORK/preflight.py" $NEED
rc=$?
if [ -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" ]; then
    nvcc="nvcc $("$CUDA_HOME/bin/nvcc" --version | grep -oE "release [0-9.]+" | cut -d' ' -f2) under $CUDA_HOME"
else
    nvcc="no nvcc under CUDA_HOME=${CUDA_HOME:-unset}"
fi
found="$(grep -E "^(python|FAIL)" "$WORK/logs/preflight.log" | head -1); $nvcc"
[ $rc = 0 ] || finish 3 "$( (grep -E "^FAIL|Error" "$WORK/logs/preflight.log" || tail -1 "$WORK/logs/preflight.log") | tail -1)"
[ $NEED = cpu ] || [ -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" ] || finish 3 "FAIL: $nvcc: the CUDA kernels cannot be built"
arch=$(grep "^ARCH=" "$WORK/logs/preflight.log" | cut -d= -f2)
[ -n "$arch" ] && export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}  # this GPU's arch only

# --- build against this machine's torch; its CUDA (dry run: CPU) kernel must be registered -----------------
cat >"$WORK/build.sh" <<EOF
set -e
# An editable install maps udd_fast.kernels to kernels/; where this checkout is already installed so (make
# setup), an in-place build is enough.
if "$PY" -c "import importlib.util as u, os, sys; s = u.find_spec('udd_fast.kernels'); sys.exit(0 if s and os.path.realpath(s.origin).startswith(os.path.realpath('kernels')) else 1)" 2>/dev/null; then
    "$PY" setup.py build_ext --inplace
else
    "$PY" -m pip install -v -e . --no-build-isolation --no-deps
fi
"$PY" -c "import sys, udd_fast._extension as e; sys.exit(e.check_build('$NEED'))"
"$PY" -c "import udd_fast.kernels"  # the Triton kernels' package resolves (the install's mapping)
EOF
step build $L_BUILD bash "$WORK/build.sh"
rc=$?
built=$(grep -E "^udd_fast(\._C)?: " "$WORK/logs/build.log" | tail -2 | paste -sd ';' -)
[ $rc = 0 ] || finish 4 "the build failed or registered no $NEED kernel for crop_resize: $(grep -E "error|CPU ONLY" \
    "$WORK/logs/build.log" | head -1) (logs.tar.gz: logs/build.log)"

# --- equivalence tests: every file its own pytest, all at once, none stopping another -----------------------
t0=$SECONDS
limit=$(limit_of $L_TESTS)
pids=()
for entry in "${TESTS[@]}"; do
    file=${entry%%|*} k=${entry#*|}
    timeout -k 2 "$limit" "$PY" -m pytest "$file" ${k:+-k "$k"} -q -rfE -p no:cacheprovider \
        >"$WORK/logs/tests-$(basename "$file" .py).log" 2>&1 &
    pids+=($!)
done
tests_ok=0
for i in "${!TESTS[@]}"; do
    file=${TESTS[$i]%%|*}
    wait "${pids[$i]}"
    rc=$?
    [ $rc = 0 ] || tests_ok=1
    test_rows+=("| $file | $(counts "$WORK/logs/tests-$(basename "$file" .py).log") | $(outcome $rc) |")
done
[ $tests_ok = 0 ] || status=1
echo "| tests (${#TESTS[@]} files at once) | $(outcome $tests_ok) | $((SECONDS - t0)) s | $limit s |" >>"$WORK/steps.md"
render

# --- benchmark rows, one file at a time; each file writes bench-json/<stem>.json as it goes -----------------
merge_bench() {  # every bench file's own JSON into $OUT/bench.json, the form of bench/results/<device>.json
    "$PY" - "$WORK/bench-json" "$OUT/bench.json" <<'EOF'
import json, sys
from pathlib import Path
docs = [json.loads(f.read_text()) for f in sorted(Path(sys.argv[1]).glob("*.json"))]
if docs:
    groups = {g: rows for d in docs for g, rows in d["groups"].items()}
    Path(sys.argv[2]).write_text(json.dumps({"meta": docs[0]["meta"], "groups": dict(sorted(groups.items()))}, indent=1))
EOF
}
for entry in "${BENCH[@]}"; do
    IFS='|' read -r file limit k <<<"$entry"
    step "bench-$(basename "$file" .py)" "$limit" "$PY" -m pytest "$file" ${k:+-k "$k"} --benchmark-only -q \
        -p no:cacheprovider --benchmark-max-time=0.25 --benchmark-min-rounds=3
    merge_bench
done

# --- a short paper-preset distillation with evaluation -------------------------------------------------------
if [ -d "$DATA/fashion-mnist" ]; then
    step distill $L_DISTILL "$PY" -m udd_fast distill --dataset fashion-mnist --ipc 1 --preset paper $DISTILL \
        --evaluate --baseline --quiet --out "$WORK/run"
    cp "$WORK/run/metrics.json" "$WORK/run/grid.png" "$OUT/" 2>/dev/null
else
    echo "| distill | FAILED (no Fashion-MNIST under $DATA/fashion-mnist: 'make carry-data', carry .carry) | 0 s | - |" \
        >>"$WORK/steps.md"
    status=1
fi

# --- how long the paper's CIFAR-10 protocol takes on this machine -------------------------------------------
step estimate $L_ESTIMATE "$PY" -m udd_fast estimate --dataset cifar10 --preset paper --ipc 1 10 $ESTIMATE \
    --json "$OUT/estimate.json"
finish $status
