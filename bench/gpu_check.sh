#!/usr/bin/env bash
# The one prepared GPU check (issue 12 item 4): on one H100 / H200, in at most 8 minutes, with a copy of the
# repository and no network: install what is missing, the machine and its bf16 matmul peak, the CUDA tests, flex
# sparse vs dense attention at 4k-64k, bf16 training throughput with MFU, KV-cached sampling vs HF generate(), a
# 1-GPU FSDP smoke run, and `vqgen tokenize --device cuda` against --device cpu. docs/benchmarks/gpu_check.md says
# more (and how to run it with the device tool).
#
#   bash bench/gpu_check.sh                   GPU machine: results in bench/results/gpu_check{.json,/}, and
#                                             docs/benchmarks/gpu_check.md (with --results-dir DIR: all in DIR);
#                                             copies to $OUT when it is set
#   bash bench/gpu_check.sh --dry-run         no GPU: every step on the CPU at toy sizes, results in a temp folder
#   bash bench/gpu_check.sh --prepare-wheels  with a network: the missing packages' wheels (CPython 3.12, x86-64
#                                             Linux) into wheelhouse/, to carry to the GPU machine
# Options: --results-dir DIR, --budget SECONDS (whole run, default 470), --only "STEP ..." (install environment tests
# sparse_attention train_mfu sampling fsdp tokenize). Environment: PYTHON (default python3, the GPU image's
# interpreter).
# Exit status: 0 when every step is ok, 1 when one is not (each step's record says why), 2 for bad arguments.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
PY="${PYTHON:-python3}"
MODE=gpu
RESULTS=""
BUDGET="${GPU_CHECK_BUDGET:-}"
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) MODE=dry ;;
    --prepare-wheels) MODE=prepare ;;
    --results-dir) RESULTS="${2:?--results-dir needs a folder}"; shift ;;
    --budget) BUDGET="${2:?--budget needs seconds}"; shift ;;
    --only) ONLY="${2:?--only needs step names}"; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done
case "${BUDGET:-0}" in *[!0-9]*) echo "gpu_check.sh: --budget must be whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac
if ! command -v "$PY" >/dev/null 2>&1; then
  echo "gpu_check.sh: no python interpreter '$PY'; set PYTHON=/path/to/python" >&2
  exit 2
fi

if [ "$MODE" = prepare ]; then
  exec "$PY" -m bench.gpu.install prepare --wheelhouse "$REPO/wheelhouse"
fi

DRY=()
SCALE=1                                                     # time caps x SCALE
# the CUDA subset: tests/test_cuda.py and the tests of others that train on the default (CUDA) device; chosen by
# -k so that a renamed test is left out instead of stopping pytest
TESTS=(tests/test_cuda.py tests/pipelines/test_train.py tests/pipelines/test_cli.py)
SELECT="test_cuda or bf16_mixed_precision or training_device_errors"
if [ "$MODE" = dry ]; then
  DRY=(--dry-run)
  SCALE=3                                                   # no device time to save; a shared CPU is slow
  BUDGET="${BUDGET:-1200}"
  if [ "${GPU_CHECK_DRY_TESTS:-some}" != all ]; then        # one test of each kind (all of them: 2-3 CPU minutes)
    TESTS=(tests/test_cuda.py tests/pipelines/test_cli.py)
    SELECT="image_fsq or matches_cpu and sparse_fixed or agree_on_device and fixed or uncached_on_device and pixelcnn"
    SELECT+=" or reloads and transformer and not sparse or training_device_errors"
  fi
  RESULTS="${RESULTS:-$(mktemp -d -t gpu_check.XXXXXX)}"   # a dry run leaves the tree as it was
  MD="$RESULTS/gpu_check.md"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"            # toy sizes; the development machine is shared
  export VQGEN_TEST_DEVICE=cpu                              # tests/test_cuda.py walks its tests on the CPU
else
  BUDGET="${BUDGET:-470}"                                   # 8 minutes, less the summary and the copies
  if [ -z "$RESULTS" ]; then                                # the default: the repository's results and docs
    RESULTS="$REPO/bench/results"
    MD="$REPO/docs/benchmarks/gpu_check.md"
  else
    MD="$RESULTS/gpu_check.md"
  fi
fi
STEPS_DIR="$RESULTS/gpu_check"                              # one JSON record and one log per step
mkdir -p "$STEPS_DIR"
rm -f "$STEPS_DIR"/*.json "$STEPS_DIR"/*.log "$STEPS_DIR"/*.xml
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"         # the repository is imported in place, nothing built
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
START=$(date +%s)
DEADLINE=$((START + BUDGET))

wanted() { [ -z "$ONLY" ] || [[ " ${ONLY//,/ } " == *" $1 "* ]]; }

# run_step NAME CAP QUIET CMD...: run CMD under a time cap (trimmed to what is left of the run's budget), its output
# into $STEPS_DIR/NAME.log (and to the console unless QUIET=1), then record its exit status in NAME.json.
run_step() {
  local name="$1" cap="$2" quiet="$3" left t0 rc log extra=()
  shift 3
  wanted "$name" || return 0
  left=$((DEADLINE - $(date +%s)))
  if [ "$left" -lt 20 ]; then
    "$PY" -m bench.gpu.report skip --results "$STEPS_DIR" --step "$name" \
      --reason "not started: the run's ${BUDGET} s budget was spent"
    return 0
  fi
  cap=$((cap * SCALE))
  [ "$cap" -gt "$left" ] && cap=$left
  log="$STEPS_DIR/$name.log"
  [ "$name" = tests ] && extra=(--junit "$STEPS_DIR/pytest.xml")
  echo "=== $name (cap ${cap} s, ${left} s left of the run) ==="
  t0=$(date +%s)
  : >"$log"
  timeout -k 10 "$cap" "${@//@CAP@/$((cap - 10))}" >"$log" 2>&1 </dev/null &
  local pid=$!
  [ "$quiet" = 1 ] || tail -n +1 -f "$log" --pid "$pid" 2>/dev/null
  wait "$pid"
  rc=$?
  "$PY" -m bench.gpu.report record --results "$STEPS_DIR" --step "$name" --rc "$rc" --seconds $(($(date +%s) - t0)) \
    --cap "$cap" --log "$log" ${extra[@]+"${extra[@]}"} ${DRY[@]+"${DRY[@]}"}
  echo "=== $name: exit status $rc after $(($(date +%s) - t0)) s ==="
  publish
}

publish() {  # what exists so far into $OUT (the device tool brings back at most 8 files): also if the run is cut off
  [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] || return 0
  tar -czf "$OUT/gpu_check_steps.tar.gz" -C "$RESULTS" gpu_check 2>/dev/null
  [ -f "$RESULTS/gpu_check.json" ] && cp "$RESULTS/gpu_check.json" "$OUT/gpu_check.json"
  [ -f "$STEPS_DIR/tests.log" ] && cp "$STEPS_DIR/tests.log" "$OUT/gpu_check_pytest.log"
  return 0
}

step() {  # step NAME CAP QUIET MODULE [ARGS...]: python -m bench.gpu.MODULE with the common arguments
  local name="$1" cap="$2" quiet="$3" script="$4"
  shift 4
  run_step "$name" "$cap" "$quiet" "$PY" -m "bench.gpu.$script" --results "$STEPS_DIR" --budget @CAP@ \
    ${DRY[@]+"${DRY[@]}"} "$@"
}

echo "gpu_check ($MODE) with $PY in $REPO; results in $RESULTS; budget ${BUDGET} s"
step install 60 0 install install --wheelhouse "$REPO/wheelhouse"
step environment 40 0 environment
# 2 and 6 check behaviour, not speed, so they share the machine; the timed steps 3-5 run alone afterwards.
step fsdp 130 1 fsdp_smoke &
FSDP_PID=$!
run_step tests 170 0 "$PY" -m pytest "${TESTS[@]}" -k "$SELECT" -p no:cacheprovider -v -rfEs \
  --continue-on-collection-errors --junitxml "$STEPS_DIR/pytest.xml"
wait "$FSDP_PID"
echo "--- fsdp (ran beside the tests): last lines of its log ---"
tail -n 25 "$STEPS_DIR/fsdp.log" 2>/dev/null
step sparse_attention 130 0 sparse_flex
step sampling 45 0 sampling_vs_hf
step tokenize 45 0 tokenize_device        # vqgen tokenize: cuda, cpu, and cuda with decode workers if time is left
step train_mfu 100 0 train_mfu             # last: its compiled mode runs only if the run has the time left

"$PY" -m bench.gpu.report summary --results "$STEPS_DIR" --json "$RESULTS/gpu_check.json" --md "$MD" \
  --seconds $(($(date +%s) - START)) ${DRY[@]+"${DRY[@]}"}
STATUS=$?
cp "$STEPS_DIR/tests.log" "$STEPS_DIR/pytest.log" 2>/dev/null
publish
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$MD" "$OUT/gpu_check.md"
  echo "copied gpu_check.json, gpu_check.md, gpu_check_pytest.log and gpu_check_steps.tar.gz to $OUT"
fi
exit "$STATUS"
