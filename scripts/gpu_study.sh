#!/usr/bin/env bash
# The study's gpu profile in one device call (one H100/H200, 16 cores; at most 10 minutes):
#   qpe study --profile gpu (simulate in 16 parallel processes, U-Net first, then the other kinds
#   4 at a time on the GPU, held-out ensembles, scores, report), then the GPU ensemble timings.
# The device image has PyTorch but not every dependency: the missing ones travel as wheels in .whl/
# (fetched beforehand by scripts/gpu_wheels.sh) and are installed into /tmp/site first.
# Results under $1, at most 8 files (the device tool's limit): study.tgz (report/, study.json, each
# model's card.json and train_log.jsonl), study.log, bench_gpu.json, run.log.
# Env: PROFILE (gpu), WORK (/tmp/gs), ARCHIVE (reuse an archive, e.g. a gpu study's for PROFILE=gpu-lags),
# MODELS, DEVICE, BUDGET_S (570), BENCH_S (45), SKIP_BENCH (local dry runs).
set -u
OUTDIR=${1:?output folder}; W=${WORK:-/tmp/gs}; mkdir -p "$W" "$OUTDIR"
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
left() { echo $(( ${BUDGET_S:-570} - ($(date +%s) - T0) )); }
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 3; }
fi
export PYTHONPATH=$PWD:/tmp/site:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
nvidia-smi -L 2>/dev/null; python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())"
el study
timeout $(( $(left) - ${BENCH_S:-45} )) python3 -m qpe_core.cli study --profile ${PROFILE:-gpu} --out "$W/study" ${DEVICE:+--device $DEVICE} \
  ${MODELS:+--models $MODELS} ${ARCHIVE:+--archive $ARCHIVE} > "$W/study.log" 2>&1
rc=$?; tail -n 40 "$W/study.log"; el "study rc=$rc"
(cd "$W/study" && tar czf "$OUTDIR/study.tgz" $(ls -d report study.json ck/*/card.json ck/*/train_log.jsonl 2>/dev/null))
cp "$W/study.log" "$OUTDIR/"
b=$(left); [ -z "${SKIP_BENCH:-}" ] && [ "$b" -gt 20 ] && timeout "$b" python3 scripts/gpu_study.py bench "$OUTDIR/bench_gpu.json"
el done; ls -la "$OUTDIR"
