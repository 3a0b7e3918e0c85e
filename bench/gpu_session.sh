#!/usr/bin/env bash
# The GPU benchmark in one go, on a machine whose own python3 holds CUDA torch (as the
# lent H100 / H200 machines here): cryofire-nb and cryoDRGN 4.3.1 side by side at D = 64 and
# D = 128 (bench_train.py --device cuda), then where the time goes (profile_gpu.py), then
# the ab initio pose-table path (train --init-search) on the GPU with what time is left.
#
# Packages the machine lacks travel as wheels in .whl/ (cryodrgn 4.3.1 with the modules it
# imports at start-up, mrcfile, starfile, gemmi), fetched beforehand with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 ... -d .whl NAME==VERSION
# They go to /tmp/site, the repository itself is on PYTHONPATH (no install).
#
#   BUDGET_S=400 OUT=/some/dir bash bench/gpu_session.sh
#
# Settings (environment): BUDGET_S (seconds for the whole script), MINUTES (wall clock per
# training tool), CRYODRGN_MINUTES (per cryoDRGN tool; abinit needs ~1 min to reach its
# pose search), TOOLS (bench_train --tools), PROFILE=0 / SEARCH=0 to skip those stages.
#
# Results: $OUT/session.log (everything printed) and $OUT/results.tgz (bench tables, JSON,
# logs, profiles; no particle stacks or weights).
set -u
OUT=${OUT:-bench/out/gpu_session}
BUDGET_S=${BUDGET_S:-400}
MIN=${MINUTES:-0.6}  # wall clock per training tool
CMIN=${CRYODRGN_MINUTES:-$MIN}
TOOLS=${TOOLS:-ours,abinit,train_vae}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/session.log") 2>&1
T0=$(date +%s)
left() { echo $((BUDGET_S - ($(date +%s) - T0))); }
stage() { echo; echo "##### $* (t=$(($(date +%s) - T0)) s, $(left) s left)"; }

stage setup
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
python3 -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, torch.cuda.get_device_name(0))"
nvidia-smi dmon -s u -d 2 > bench/out/gpu_dmon.txt 2>&1 &
DMON=$!
OURS="python3 -m cryofire_nb"
CDRGN="python3 -c 'import sys; from cryodrgn.command_line import main_commands as m; sys.exit(m())'"

bench() {  # box n heldout tools
    timeout "$(left)" python3 bench/bench_train.py --device cuda --box "$1" --n "$2" --heldout-n "$3" \
        --minutes "$MIN" --cryodrgn-minutes "$CMIN" --tools "$4" --ours-cmd "$OURS" --cryodrgn-cmd "$CDRGN" \
        -o "bench/out/gpu_d$1_${4//,/_}" || echo "bench_train d=$1 $4: exit $?"
}

stage "D=64: $TOOLS"
bench 64 10000 1000 "$TOOLS"
if [ "${PROFILE:-1}" = 1 ]; then
    stage "profile D=64"
    timeout "$(left)" python3 bench/profile_gpu.py bench/out/bench_train_data_n10000_d64 --train-batches 64 128 256 \
        --infer-batches 1024 4096 --infer-turns 1 4 -o bench/out/gpu_profile_d64.json || echo "profile d=64: exit $?"
fi
stage "D=128: $TOOLS"
bench 128 4000 500 "$TOOLS"
if [ "${PROFILE:-1}" = 1 ]; then
    stage "profile D=128"
    timeout "$(left)" python3 bench/profile_gpu.py bench/out/bench_train_data_n4000_d128 --train-batches 64 128 \
        --infer-batches 512 2048 -o bench/out/gpu_profile_d128.json || echo "profile d=128: exit $?"
fi
if [ "${SEARCH:-1}" = 1 ] && [ "$(left)" -gt 90 ]; then
    stage "D=64: ours --init-search (pose table) on the GPU"
    MIN=$(python3 -c "print(round(max(0.5, min(2.0, ($(left) - 40) / 60)), 2))") bench 64 10000 0 ours_search
fi
kill $DMON 2>/dev/null
stage done
tar czf "$OUT/results.tgz" --exclude='*.mrcs' --exclude='*.mrc' --exclude='*.pt' --exclude='*.pkl' \
    --exclude='bench_train_data_*' --exclude='bench_train_heldout_*' bench/out 2>/dev/null
ls -la "$OUT"
for f in bench/out/gpu_d*/bench_train.md; do echo "== $f"; cat "$f"; done
