#!/usr/bin/env bash
# The study's gpu profile in one device call (one H100/H200, 16 cores; at most 10 minutes):
#   qpe study --profile gpu (simulate in 16 parallel processes, U-Net first, then the other kinds
#   4 at a time on the GPU, held-out ensembles, scores, report), then the GPU ensemble timings.
# Results under $1: the study's report/ and study.json (small files only: the device tool brings
# back files up to 16 MB), and bench_gpu.json.
set -u
OUTDIR=${1:?output folder}; W=${WORK:-/tmp/gs}; mkdir -p "$W" "$OUTDIR"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
nvidia-smi -L 2>/dev/null
el study; python3 -m qpe_core.cli study --profile gpu --out "$W/study" ${MODELS:+--models $MODELS} > "$W/study.log" 2>&1
rc=$?; tail -n 60 "$W/study.log"; el "study rc=$rc"
cp -r "$W/study/report" "$OUTDIR/" 2>/dev/null; cp "$W/study/study.json" "$W/study.log" "$OUTDIR/" 2>/dev/null
tar czf "$OUTDIR/cards.tgz" -C "$W/study" $(cd "$W/study" && ls ck/*/card.json ck/*/train_log.jsonl 2>/dev/null)
[ -z "${SKIP_BENCH:-}" ] && timeout 120 python3 scripts/gpu_study.py bench "$OUTDIR/bench_gpu.json"
el done; ls -la "$OUTDIR"
