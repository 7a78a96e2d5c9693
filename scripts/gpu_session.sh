#!/usr/bin/env bash
# The checks of a GPU session, in one go: the CUDA tests (tests/test_cuda.py: gradients, every
# defense and every pinned short run against the CPU), then the device-aware benchmarks on cuda
# (engine, overhead, models). Each stage has its own time limit and a failing stage does not stop
# the next. Everything lands in OUTDIR: log.txt, cuda-runs.json and one JSON per benchmark.
#
#   bash scripts/gpu_session.sh OUTDIR
#
# Run from the repository root on a machine whose python3 has a CUDA build of torch (the package
# need not be installed: src/ is put on the path). The overhead benchmark reads real MNIST from
# $TESSERACT_FL_DATA (or ~/.cache/tesseract-fl). Limits in seconds: T_TESTS, T_BENCH.
set -u
out=${1:?usage: bash scripts/gpu_session.sh OUTDIR}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
log="$out/log.txt"
{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    $py -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
torch.cuda.get_device_name(0), 'threads', torch.get_num_threads())"
} >"$log" 2>&1
stage() { # name limit command...
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    echo "==> $name (limit ${limit} s)" >>"$log"
    timeout "$limit" "$@" >>"$log" 2>&1
    rc=$?
    echo "<== $name rc=$rc in $((SECONDS - t0)) s" | tee -a "$log"
}
TESSERACT_FL_CUDA_REPORT="$out/cuda-runs.json" \
    stage tests "${T_TESTS:-150}" $py -m pytest tests/test_cuda.py -q -p no:cacheprovider --tb=short
for b in engine overhead models; do
    stage "$b" "${T_BENCH:-150}" $py -m benchmarks "$b" --device cuda --out "$out/$b-cuda.json"
done
