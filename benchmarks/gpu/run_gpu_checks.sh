#!/usr/bin/env bash
# The GPU verification run of evsoftmax, for a machine with an NVIDIA GPU (H100/H200).
#
#   bash benchmarks/gpu/run_gpu_checks.sh [STEP...]        # from anywhere in the repo
#
# Steps (default: all, in this order):
#   env          nvidia-smi and the versions of Python, numpy, cupy, torch, triton, jax
#   tests-cupy   the whole test-suite with EVSOFTMAX_TEST_BACKENDS=cupy (the fused kernels)
#   tests-torch  ... =torch with CUDA as torch's default device (the Triton path)
#   tests-jax    ... =jax (on the GPU when JAX's CUDA plugin finds one)
#   bench        `evsoftmax bench` on cupy,torch,jax with the GPU shapes 8192x8192 and
#                64x128000, float32 and bfloat16 (when the CLI has a dtype option)
#   cupy-bench   benchmarks/gpu/cupy_bench.py: fused kernels vs a like-for-like fused
#                softmax, cupyx softmax and the device-to-device copy bandwidth
#   attention-bench  benchmarks/gpu/attention_bench.py: torch ev_attention's CUDA kernels
#                against the blocked torch path (correctness) and SDPA flash (time, memory)
# Groups: tests (the three test steps), benchmarks (bench cupy-bench attention-bench), all.
#
# Everything lands in $OUT (default: ./gpu-out): summary.txt (also printed at the end),
# logs.tar.gz (every step's full log), bench-<dtype>.json/.png, cupy-bench.json and
# attention-bench.json;
# at most 8 files, so a device tool can bring them all back. Each step runs under its own
# time limit (LIMIT_TESTS, LIMIT_BENCH, LIMIT_CUPY_BENCH, LIMIT_ATTENTION, in seconds) and a failing
# or hanging step does not stop the next. Exit status 0 only if every step passed.
#
# Python packages: the GPU image has numpy, cupy, torch, triton, jax, pytest,
# hypothesis, scipy, matplotlib and rich, but no array-api-compat. Wheels found in
# .whl/ (see fetch_wheels.sh) are installed into a private folder first.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PYTHON:-python3}
OUT=${OUT:-$ROOT/gpu-out}
LOGS=$(mktemp -d)
SUMMARY=$LOGS/summary.txt
LIMIT_TESTS=${LIMIT_TESTS:-170}
LIMIT_BENCH=${LIMIT_BENCH:-180}
LIMIT_CUPY_BENCH=${LIMIT_CUPY_BENCH:-120}
LIMIT_ATTENTION=${LIMIT_ATTENTION:-300}
SHAPES=8192x8192,64x128000
FAILED=()
mkdir -p "$OUT"

export PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # leave GPU memory to the other frameworks
export PYTHONPATH=$ROOT/src:$ROOT/benchmarks/gpu${PYTHONPATH:+:$PYTHONPATH}
if compgen -G ".whl/*.whl" >/dev/null; then
  SITE=/tmp/evsoftmax-gpu-site
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || echo "warning: installing .whl/ failed" >&2
  export PYTHONPATH=$SITE:$PYTHONPATH
fi

note() { echo "$*" | tee -a "$SUMMARY"; }

# run_step NAME LIMIT COMMAND...: run COMMAND under a time limit, log it, record the outcome.
run_step() {
  local name=$1 limit=$2 start=$SECONDS rc status
  shift 2
  note "== $name (limit ${limit}s): $*"
  timeout --kill-after=15 "$limit" "$@" >"$LOGS/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status="passed" ;;
    124 | 137) status="TIMED OUT" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  [[ $rc == 0 ]] || FAILED+=("$name")
  note "   $status after $((SECONDS - start))s; last lines of $name.log:"
  tail -n 4 "$LOGS/$name.log" | sed 's/^/   | /' | tee -a "$SUMMARY"
}

step_env() {
  {
    nvidia-smi || echo "nvidia-smi failed"
    "$PY" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("numpy", "array_api_compat", "cupy", "torch", "triton", "jax", "jaxlib", "ml_dtypes"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "unavailable:", type(exc).__name__, exc)
import evsoftmax
print("evsoftmax", evsoftmax.__file__)
EOF
  } >"$LOGS/env.log" 2>&1
  note "== env"
  grep -E "^(python|numpy|array_api_compat|cupy|torch|triton|jax|evsoftmax) |NVIDIA H|Driver" \
    "$LOGS/env.log" | sed 's/^/   | /' | tee -a "$SUMMARY"
}

step_tests() {  # step_tests BACKEND [ENV=VALUE...]
  local backend=$1
  shift
  run_step "tests-$backend" "$LIMIT_TESTS" env EVSOFTMAX_TEST_BACKENDS="$backend" "$@" \
    "$PY" -m pytest -q -rfEs -p no:cacheprovider -p evsoftmax_gpu_plugin tests
}

step_bench() {
  local help options=() dtypes=(float32)
  if ! help=$("$PY" -m evsoftmax bench --help 2>&1); then
    note "== bench: 'evsoftmax bench' is not available here"
    FAILED+=(bench)
    return
  fi
  grep -q -- "--device" <<<"$help" && options+=(--device gpu)
  grep -q -- "--no-progress" <<<"$help" && options+=(--no-progress)
  if grep -qE -- "--dtypes\b" <<<"$help"; then  # one run over both dtypes
    run_step bench "$((2 * LIMIT_BENCH))" "$PY" -m evsoftmax bench --backends cupy,torch,jax \
      --shapes "$SHAPES" --dtypes float32,bfloat16 "${options[@]}" \
      --json "$OUT/bench.json" --plot "$OUT/bench.png"
    return
  fi
  if grep -qE -- "--dtype\b" <<<"$help"; then
    dtypes=(float32 bfloat16)
  else
    note "== bench: this 'evsoftmax bench' has no --dtype option; float32 only"
  fi
  for dtype in "${dtypes[@]}"; do
    local extra=()
    [[ ${#dtypes[@]} -gt 1 ]] && extra=(--dtype "$dtype")
    run_step "bench-$dtype" "$LIMIT_BENCH" "$PY" -m evsoftmax bench --backends cupy,torch,jax \
      --shapes "$SHAPES" "${options[@]}" "${extra[@]}" \
      --json "$OUT/bench-$dtype.json" --plot "$OUT/bench-$dtype.png"
  done
}

step_cupy_bench() {
  run_step cupy-bench "$LIMIT_CUPY_BENCH" "$PY" benchmarks/gpu/cupy_bench.py \
    --shapes "$SHAPES" --dtypes float32,bfloat16,float16 --json "$OUT/cupy-bench.json"
  # The table is the end of the log.
  tail -n 8 "$LOGS/cupy-bench.log" | sed 's/^/   | /' >>"$SUMMARY"
}

step_attention_bench() {
  run_step attention-bench "$LIMIT_ATTENTION" "$PY" benchmarks/gpu/attention_bench.py \
    --json "$OUT/attention-bench.json"
  grep -E "^wrote|ratio_to_sdpa" "$LOGS/attention-bench.log" | tail -n 12 | cut -c1-400 \
    | sed 's/^/   | /' >>"$SUMMARY"
}

steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=(all)
expanded=()
for s in "${steps[@]}"; do
  case $s in
    all) expanded+=(env tests-cupy tests-torch tests-jax bench cupy-bench attention-bench) ;;
    tests) expanded+=(env tests-cupy tests-torch tests-jax) ;;
    benchmarks) expanded+=(env bench cupy-bench attention-bench) ;;
    env | tests-cupy | tests-torch | tests-jax | bench | cupy-bench | attention-bench) expanded+=("$s") ;;
    *)
      echo "unknown step '$s'; see the top of $0" >&2
      exit 2
      ;;
  esac
done

note "evsoftmax GPU checks, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
declare -A done_steps=()
for s in "${expanded[@]}"; do
  [[ -z ${done_steps[$s]:-} ]] || continue  # each step once, even when two groups name it
  done_steps[$s]=1
  case $s in
    env) step_env ;;
    tests-cupy) step_tests cupy ;;
    tests-torch) step_tests torch EVSOFTMAX_TEST_DEVICE=cuda ;;
    tests-jax) step_tests jax ;;
    bench) step_bench ;;
    cupy-bench) step_cupy_bench ;;
    attention-bench) step_attention_bench ;;
  esac
done

if [[ ${#FAILED[@]} -eq 0 ]]; then note "ALL STEPS PASSED"; else note "FAILED STEPS: ${FAILED[*]}"; fi
cp "$SUMMARY" "$OUT/summary.txt"
tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .
echo "results in $OUT:"
ls -l "$OUT"
[[ ${#FAILED[@]} -eq 0 ]]
