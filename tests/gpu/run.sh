#!/usr/bin/env bash
# tests/gpu/run.sh LOGDIR: build tokd with CUDA and run the GPU tests on the machine's GPU, each
# under a time limit (about 8 minutes in all at worst), logs in LOGDIR, a summary table at the end.
#   1. build (make CUDA=1, BUILD=$BUILD, default build-gpu); SKIP_BUILD=1 uses the binaries already in
#      $BUILD/gpu instead (built on another machine with the same CUDA major version, for a GPU
#      machine that lacks the Debian -dev packages; their shared libraries then go in LD_LIBRARY_PATH)
#   2. test_cuda_kernels: every CUDA kernel against the CPU scalar reference, max rel error per case
#   3. test_cuda_model: stories260K vs llama.cpp's greedy reference and SmolLM2 CPU vs CUDA
#   4. test_cuda_perf: Llama-3-8B-shaped random model (bf16, Q8_0), tokens/s vs HBM and FLOP floors
#   5. compute-sanitizer memcheck and racecheck over the kernel test, when the tool exists (report only)
#   6. serve_check.sh: tokd generate/serve --device cuda on SmolLM2 against the CPU, and a load test
# STEPS: which of kernels, model, perf, memcheck, racecheck, serve to run (default all).
# Environment: SHARED (default ../shared, then ./shared), TOKD_MODEL (SmolLM2 Q4_1 gguf), BUILD, JOBS.
# Never run by make test (CI has no GPU); make test only builds these binaries.
set -u
LOGDIR=${1:?usage: tests/gpu/run.sh LOGDIR}
cd "$(dirname "$0")/../.."
mkdir -p "$LOGDIR"
LOGDIR=$(cd "$LOGDIR" && pwd)
BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 4)}
SHARED=${SHARED:-../shared}
[ -d "$SHARED/testdata" ] || SHARED=./shared
MODEL=${TOKD_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
export PATH="$PATH:/usr/local/cuda/bin"

STEPS=" ${STEPS:-kernels model perf memcheck racecheck serve} "
want() { [[ "$STEPS" == *" $1 "* ]]; }
declare -a NAMES STATUS SECS NOTES
step() { # step NAME LIMIT_S NOTE_REGEX CMD...
    local name=$1 limit=$2 re=$3; shift 3
    local log="$LOGDIR/$name.log" t0 rc
    t0=$(date +%s)
    echo "== $name (limit ${limit}s): $*" | tee "$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    local dt=$(( $(date +%s) - t0 )) st=PASS
    [ $rc -ne 0 ] && st="FAIL($rc)"
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && st=TIMEOUT
    tail -n 40 "$log"
    NAMES+=("$name"); STATUS+=("$st"); SECS+=("$dt")
    NOTES+=("$(grep -E "$re" "$log" | tail -n 3 | tr '\n' ';' | cut -c1-150)")
    return $rc
}

nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv > "$LOGDIR/gpu.txt" 2>&1 || true
if [ "${SKIP_BUILD:-0}" = 1 ]; then
    build=(bash -c 'ls -l "$0"/tokd "$0"/gpu/test_cuda_* && ldd "$0"/tokd && ! ldd "$0"/tokd "$0"/gpu/test_cuda_* | grep "not found"' "$BUILD")
else
    build=(make -j"$JOBS" CUDA=1 BUILD="$BUILD" SHARED="$SHARED" "$BUILD/tokd" gpu_tests)
fi
if step build 180 'error|cuda_check|not found' "${build[@]}"; then
    want kernels && step kernels 30 'cases within|FAIL' "$BUILD/gpu/test_cuda_kernels"
    want model && step model 45 'test_cuda_model|FAIL' env TOKD_SHARED="$SHARED" "$BUILD/gpu/test_cuda_model" "$SHARED" "$MODEL"
    want perf && step perf 60 '^PERF|FAIL' "$BUILD/gpu/test_cuda_perf"
    if want memcheck && command -v compute-sanitizer >/dev/null 2>&1; then
        step memcheck 30 'ERROR SUMMARY|cases within' compute-sanitizer --tool memcheck --print-limit 20 "$BUILD/gpu/test_cuda_kernels"
    fi
    if want racecheck && command -v compute-sanitizer >/dev/null 2>&1; then
        step racecheck 60 'RACECHECK SUMMARY|cases within' compute-sanitizer --tool racecheck --print-limit 20 "$BUILD/gpu/test_cuda_kernels"
    fi
    if want serve && [ -f "$MODEL" ]; then
        step serve 60 'PASS|FAIL|output tok/s|TTFT' tests/gpu/serve_check.sh "$BUILD/tokd" "$MODEL" "$LOGDIR"
    fi
fi

echo
echo "==================== tokd GPU tests: $(head -n 2 "$LOGDIR/gpu.txt" | tail -n 1) ===================="
printf '%-10s %-12s %6s  %s\n' step status secs notes
fail=0
for i in "${!NAMES[@]}"; do
    printf '%-10s %-12s %6s  %s\n' "${NAMES[$i]}" "${STATUS[$i]}" "${SECS[$i]}" "${NOTES[$i]}"
    [ "${STATUS[$i]}" = PASS ] || { [ "${NAMES[$i]}" = memcheck ] || [ "${NAMES[$i]}" = racecheck ] || fail=1; }
done
echo "logs: $LOGDIR"
exit $fail
