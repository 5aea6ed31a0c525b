#!/usr/bin/env bash
# What a machine with a GPU owes the project, in phases that each fit in about
# ten minutes (run several in one go when time allows):
#
#   tools/gpu_session.sh build test           # the CUDA extension for this GPU; the whole suite, Triton compiled
#   tools/gpu_session.sh overhead bench       # wall / host / kernel / graph-replay time per op, a per-kernel
#                                             # profile of bank contrast; the quick suite
#   tools/gpu_session.sh train                # training compares: eager, then whole-step CUDA graphs
#   tools/gpu_session.sh sanitizer            # compute-sanitizer memcheck and racecheck over the CUDA kernels
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

device_dir() {
  python - <<'EOF'
import re, torch
print("benchmarks/results/" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-"))
EOF
}

phase_build() {
  local arch
  arch=$(python -c "import torch; print('%d%d' % torch.cuda.get_device_capability())")
  RDKERNELS_BUILD_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} RDKERNELS_CUDA_ARCHS=$arch \
    python -m pip install --no-build-isolation --no-deps -v -e . > "$LOGS/build.log" 2>&1 \
    || { tail -n 60 "$LOGS/build.log"; return 1; }
  python tools/ptxas_report.py "$LOGS/build.log" | tail -n 5
  if compgen -G ".whl/*.whl" > /dev/null; then
    python -m pip install --no-deps .whl/*.whl > "$LOGS/peers.log" 2>&1 || tail -n 5 "$LOGS/peers.log"
  fi
  python -c "import torch, triton, rdkernels; from rdkernels import _C; \
print(torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)"
}

phase_test() {
  python -m pytest -q -n 8 -p no:cacheprovider python_tests 2>&1 | tee "$LOGS/tests.txt" | tail -n 25
}

phase_overhead() {
  local dir
  dir=$(device_dir); mkdir -p "$dir"
  # TRITON_PRINT_AUTOTUNING: the log records which launch candidate won, and each one's time
  TRITON_PRINT_AUTOTUNING=1 python -m benchmarks.overhead --op dcd --op shared_bank_contrast --op sinkhorn \
    --op bank_contrast --json "$dir/overhead.json" 2>&1 | tee "$LOGS/overhead.txt"
  python -m benchmarks.overhead --op crd_step --preset cifar --json "$dir/overhead-crd_step-cifar.json" \
    2>&1 | tee -a "$LOGS/overhead.txt"
  # per-kernel times of both strategies at CIFAR-100 (the dense CSR build, kernel and merge)
  python -m benchmarks.profile > "$dir/profile-bank_contrast.txt" 2> "$LOGS/profile.err" || tail -n 5 "$LOGS/profile.err"
}

phase_bench() {
  python -m benchmarks --quick --no-progress 2>&1 | tee "$LOGS/bench.txt" | tail -n 40
}

phase_train() {
  local common=(--steps 200 --warmup 20 --no-index-checks --no-progress --results "$(device_dir)")
  python -m rdkernels.harness compare --distill crd,dcd,rrd,wcord "${common[@]}" 2>&1 | tee "$LOGS/train.txt"
  python -m rdkernels.harness compare --distill crd,dcd,rrd,wcord --cuda-graph "${common[@]}" 2>&1 \
    | tee -a "$LOGS/train.txt"
  python -m rdkernels.harness compare --distill crd --cuda-graph --amp "${common[@]}" 2>&1 | tee -a "$LOGS/train.txt"
}

phase_sanitizer() {
  local tool file
  for tool in memcheck racecheck; do
    for file in test_bank_update.py test_bank_contrast_strategies.py test_shared_bank_contrast.py \
                test_dcd_loss.py test_sinkhorn.py; do
      echo "== $tool $file"
      compute-sanitizer --tool "$tool" --target-processes all \
        python -m pytest -q -x -k cuda -p no:cacheprovider "python_tests/ops/$file" 2>&1 \
        | grep -E "passed|failed|ERROR SUMMARY|RACECHECK SUMMARY|Error" | tail -n 4
    done
  done 2>&1 | tee "$LOGS/sanitizer.txt"
}

[ $# -gt 0 ] || { sed -n 2,13p "$0"; exit 2; }
status=0
for phase in "$@"; do
  echo "=== $phase ($(date -u +%H:%M:%S))"
  start=$SECONDS
  "phase_$phase" || status=1
  echo "=== $phase: $((SECONDS - start)) s"
done
exit $status
