#!/usr/bin/env bash
# What a machine with a GPU owes the project, in phases that each fit in about
# ten minutes (run several in one go when time allows):
#
#   tools/gpu_session.sh build test           # the CUDA extension for this GPU; the whole suite, Triton compiled
#   tools/gpu_session.sh overhead bench       # wall / host / kernel / graph-replay time per op, a per-kernel
#                                             # profile of bank contrast, split-count sweeps; the
#                                             # quick suite, the CIFAR and ImageNet presets, DCD's batch sweep
#   tools/gpu_session.sh train                # training compares: eager, then whole-step CUDA graphs
#   tools/gpu_session.sh sanitizer            # compute-sanitizer memcheck and racecheck over the CUDA kernels
#                                             # (alone: memcheck, racecheck; each up to ~9 minutes)
#   tools/gpu_session.sh targets              # every issue target against the results above (a table)
#   tools/gpu_session.sh costmodel            # bank contrast's two strategies timed on a grid of shapes, and
#                                             # the cost model's GPU constants fitted to them (a few minutes)
#
# Benchmark JSON and plots go to benchmarks/results/<device>/; logs go to
# $LOGS (default gpu-session/). Wheels of the optional benchmark peers (POT,
# geomloss) are installed from .whl/ when that folder exists.
set -uo pipefail
cd "$(dirname "$0")/.."
LOGS=${LOGS:-gpu-session}
mkdir -p "$LOGS"
export RDKERNELS_CHECK_INDICES=${RDKERNELS_CHECK_INDICES:-1}
unset TRITON_INTERPRET

# The folder `python -m benchmarks` writes to: benchmarks/results/<slug of the device name>.
device_dir() {
  python -c 'import torch
from benchmarks.__main__ import RESULTS
from benchmarks.report import device_info
import os
# relative to the repository: the path lands in the command a training report records
print(os.path.relpath(RESULTS / device_info(torch.device("cuda"))["slug"]))'
}

# A phase runs all its commands and fails if any of them failed: a function's status
# is otherwise its last command's, which hides the failures before it.
phase_build() {
  local arch
  arch=$(python -c "import torch; print('%d%d' % torch.cuda.get_device_capability())") || return 1
  RDKERNELS_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} RDKERNELS_CUDA_ARCHS=$arch \
    python -m pip install --no-build-isolation --no-deps -v -e . > "$LOGS/build.log" 2>&1 \
    || { tail -n 60 "$LOGS/build.log"; return 1; }
  python tools/ptxas_report.py "$LOGS/build.log" | tail -n 5
  if compgen -G ".whl/*.whl" > /dev/null; then
    python -m pip install --no-deps .whl/*.whl > "$LOGS/peers.log" 2>&1 || tail -n 5 "$LOGS/peers.log"
  fi
  python -c "import torch, triton, rdkernels; from rdkernels import _C; \
print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)" || return 1
  # which backend auto picks per op on this GPU, and why any other cannot run
  python -m rdkernels | tee "$LOGS/env.txt"
}

phase_test() {
  local workers=()
  # pytest-xdist comes with the test extra; without it, one process rather than a usage error.
  # worksteal (xdist >= 3.2): an idle worker takes queued tests from a busy one, where the
  # default hands out fixed batches (one worker once ran the Sinkhorn GPU sweeps alone for minutes)
  python -c "import xdist" 2> /dev/null && workers=(-n 8)
  python -c "import sys, xdist; sys.exit(tuple(map(int, xdist.__version__.split('.')[:2])) < (3, 2))" 2> /dev/null \
    && workers+=(--dist worksteal)
  python -m pytest -q ${workers[@]+"${workers[@]}"} -p no:cacheprovider python_tests 2>&1 \
    | tee "$LOGS/tests.txt" | tail -n 25
}

phase_overhead() {
  local dir rc=0
  dir=$(device_dir) || return 1
  mkdir -p "$dir"
  # TRITON_PRINT_AUTOTUNING: the log records which launch candidate won, and each one's time
  TRITON_PRINT_AUTOTUNING=1 python -m benchmarks.overhead --op shared_bank_contrast --op bank_contrast \
    --json "$dir/overhead.json" 2>&1 | tee "$LOGS/overhead.txt" || rc=1
  # the sizes and modes the issues' targets name, judged in kernel time by benchmarks/targets.py:
  # DCD's batches up to 1024, the Sinkhorn solve alone, the CRD step at RepDistiller's CIFAR-100
  # and ImageNet sizes
  TRITON_PRINT_AUTOTUNING=1 python -m benchmarks.overhead --op dcd --size full --match float32 \
    --json "$dir/overhead-dcd.json" 2>&1 | tee -a "$LOGS/overhead.txt" || rc=1
  # RRD's Triton op at a few queue split counts (the sweep that set its heuristic), and bank
  # contrast's dense kernels at a few bank split counts (theirs, two programs an SM, has none)
  python -m benchmarks.splits --json "$dir/splits-shared_bank_contrast.json" 2>&1 | tee -a "$LOGS/overhead.txt" || rc=1
  python -m benchmarks.splits --op bank_contrast_dense --batch 64 256 --json "$dir/splits-bank_contrast_dense.json" \
    2>&1 | tee -a "$LOGS/overhead.txt" || rc=1
  # Sinkhorn's targets time the solve alone, as the suite's fwd rows do; not the peers (POT takes
  # ~1.4 s a call at 64 x 128^2, ~3 minutes a case here): the suite times them, and no kernel-time
  # target names them
  TRITON_PRINT_AUTOTUNING=1 python -m benchmarks.overhead --op sinkhorn --forward-only --impl naive --impl torch \
    --impl triton --impl cuda --impl cuda-shared --json "$dir/overhead-sinkhorn-fwd.json" 2>&1 \
    | tee -a "$LOGS/overhead.txt" || rc=1
  for preset in cifar imagenet; do   # the log names the dense kernel's tuned candidate at CIFAR-100
    TRITON_PRINT_AUTOTUNING=1 python -m benchmarks.overhead --op crd_step --preset "$preset" \
      --json "$dir/overhead-crd_step-$preset.json" \
      2>&1 | tee -a "$LOGS/overhead.txt" || rc=1
  done
  # per-kernel times of both strategies at CIFAR-100 (the dense sample count, kernel and merge);
  # copied into the results only when complete
  if python -m benchmarks.profile > "$LOGS/profile-bank_contrast.txt" 2> "$LOGS/profile.err"; then
    cp "$LOGS/profile-bank_contrast.txt" "$dir/profile-bank_contrast.txt"
  else
    tail -n 5 "$LOGS/profile.err"; rc=1
  fi
  return $rc
}

phase_bench() {
  local preset rc=0
  python -m benchmarks --quick --no-progress 2>&1 | tee "$LOGS/bench.txt" | tail -n 40 || rc=1
  # the issues' targets name RepDistiller's CIFAR-100 and ImageNet sizes and DCD's batches up
  # to 1024, which the quick sweep leaves out (benchmarks/targets.py reads all of these)
  for preset in cifar imagenet; do
    python -m benchmarks --preset "$preset" --op crd_step --op bank_contrast --no-progress 2>&1 \
      | tee -a "$LOGS/bench.txt" | tail -n 20 || rc=1
  done
  python -m benchmarks --op dcd --no-progress 2>&1 | tee -a "$LOGS/bench.txt" | tail -n 30 || rc=1
  return $rc
}

phase_targets() {
  local dir
  dir=$(device_dir) || return 1
  python -m benchmarks.targets "$dir" --json "$dir/targets.json" | tee "$LOGS/targets.md"
}

phase_costmodel() {
  local dir backend rc=0
  dir=$(device_dir) || return 1
  mkdir -p "$dir"
  # the constants in rdkernels/ops/bank_contrast/cost_model.py are from an older dense path;
  # the fit says which strategy each backend should take where (copy the line in by hand)
  for backend in cuda triton; do
    python -m benchmarks.fit_cost_model --backend "$backend" --json "$dir/cost-model-fit-$backend.json" 2>&1 \
      | tee -a "$LOGS/costmodel.txt" | tail -n 34 || rc=1
  done
  return $rc
}

phase_train() {
  local dir distill rc=0
  dir=$(device_dir) || return 1
  local common=(--steps 200 --warmup 20 --no-index-checks --no-progress --results "$dir")
  : > "$LOGS/train.txt"
  # one process per distiller: one that fails (a step that cannot be captured, say) keeps
  # the others' results
  for distill in crd dcd rrd wcord; do
    python -m rdkernels.harness compare --distill "$distill" "${common[@]}" 2>&1 | tee -a "$LOGS/train.txt" || rc=1
  done
  for distill in crd dcd rrd wcord; do
    python -m rdkernels.harness compare --distill "$distill" --cuda-graph "${common[@]}" 2>&1 \
      | tee -a "$LOGS/train.txt" || rc=1
  done
  # the issue's headline run; its profile says which kernels make up the CRD step's excess over KD
  python -m rdkernels.harness compare --distill crd --cuda-graph --amp --profile-steps 20 "${common[@]}" 2>&1 \
    | tee -a "$LOGS/train.txt" || rc=1
  return $rc
}

# compute-sanitizer over the CUDA backend's tests, one test file per process; the kernels
# whose synchronisation changed since the last GPU run come first. Each file gets at most
# SANITIZER_FILE_TIMEOUT seconds (an instrumented launch is 10-100x slower): one slow file
# cannot eat the phase, and a file cut short counts as a failure (incomplete, not clean).
sanitize() {
  local tool=$1 sanitizer file log status rc=0
  sanitizer=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
  [ -x "$sanitizer" ] || { echo "compute-sanitizer not found (PATH, CUDA_HOME)"; return 1; }
  : > "$LOGS/sanitizer-$tool.txt"
  for file in test_dcd_loss.py test_bank_update.py test_bank_contrast_strategies.py \
              test_shared_bank_contrast.py test_sinkhorn.py; do
    log="$LOGS/sanitizer-$tool-${file%.py}.log"
    # --error-exitcode: a finding fails the phase (by default the tool exits with pytest's status)
    # -k: a process that ignores the TERM (a wedged launch) is killed 15 s later
    timeout -k 15 "${SANITIZER_FILE_TIMEOUT:-110}" "$sanitizer" --tool "$tool" --error-exitcode 1 \
      --target-processes all python -m pytest -q -x -k cuda -p no:cacheprovider "python_tests/ops/$file" \
      > "$log" 2>&1
    status=$?
    [ $status -eq 0 ] || rc=1
    { echo "== $tool $file$( (( status == 124 || status == 137 )) && echo ": TIMED OUT, partial")"
      grep -E "passed|failed|skipped|ERROR SUMMARY|RACECHECK SUMMARY|Error" "$log" | tail -n 4; } \
      | tee -a "$LOGS/sanitizer-$tool.txt"
  done
  return $rc
}

phase_memcheck() { sanitize memcheck; }
phase_racecheck() { sanitize racecheck; }
phase_sanitizer() {
  local rc=0
  phase_memcheck || rc=1
  phase_racecheck || rc=1
  return $rc
}

[ $# -gt 0 ] || { awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 2; }   # the header above
for phase in "$@"; do  # a misspelt phase is refused before any phase spends GPU time
  declare -F "phase_$phase" > /dev/null \
    || { echo "unknown phase: $phase (build test overhead bench train sanitizer memcheck racecheck targets costmodel)"
         exit 2; }
done
status=0
for phase in "$@"; do
  echo "=== $phase ($(date -u +%H:%M:%S))"
  start=$SECONDS
  result=ok
  "phase_$phase" || { status=1; result=FAILED; }
  echo "=== $phase: $((SECONDS - start)) s, $result"
done
exit $status
