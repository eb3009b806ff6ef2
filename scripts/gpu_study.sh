#!/usr/bin/env bash
# GPU study in one device call (about 9 minutes on one H100, 16 cores):
#   1. simulate June 2024 on france-3km in 12 parallel segments (1-hour gaps between segments,
#      so no training stack straddles two independent simulations) while timing the ensembles
#      on the GPU (fp32, bf16 channels-last, bf16 + torch.compile);
#   2. train unet, ddpm, flow, residual-flow (4 lags) and residual-flow with 1 lag in parallel
#      with equal budgets (same steps, batch, patch, learning rate) up to a deadline;
#   3. draw evaluation ensembles on the held-out 26-30 June and CRPS-vs-steps ensembles;
# results as a few files under $1 (scored afterwards on any machine with `qpe`).
set -u
OUTDIR=${1:?output folder}; W=${WORK:-/tmp/gs}; mkdir -p "$W" "$OUTDIR"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
STEPS=${STEPS:-1200}; TRAIN_S=${TRAIN_S:-240}; A=$W/sim.zarr; DEVICE=${DEVICE:-cuda}
NSEG=${NSEG:-12}; SEG_SLOTS=${SEG_SLOTS:-236}; TRAIN_END=${TRAIN_END:-2024-06-24T23:45Z}
EVAL=${EVAL:-"2024-06-26T00:00Z 2024-06-30T23:45Z"}; export DEVICE
nvidia-smi -L 2>/dev/null; el create; python3 scripts/gpu_study.py create $A 2024-06-01T00:00Z 2024-06-30T23:45Z || exit 1
for i in $(seq 0 $((NSEG - 1))); do
  start=$(python3 -c "import pandas as pd; print((pd.Timestamp('2024-06-01T00:00Z') + pd.Timedelta(minutes=15 * 240 * $i)).isoformat())")
  python3 scripts/gpu_study.py simulate $A "$start" $SEG_SLOTS $((100 + i)) > $W/sim_$i.log 2>&1 &
done
[ "$DEVICE" = cuda ] && [ -z "${SKIP_BENCH:-}" ] && el bench && timeout 150 python3 scripts/gpu_study.py bench "$OUTDIR/bench_gpu.json" > $W/bench.log 2>&1; tail -n 3 $W/bench.log
wait; el simulated; cat $W/sim_*.log | tail -n 2
train() {  # kind out lags [extra TrainConfig keywords]
  OMP_NUM_THREADS=2 timeout $TRAIN_S python3 -c "
from qpe_core.training.train import TrainConfig, train
train(TrainConfig(archive='$A', kind='$1', out='$W/ck/$2', lags=$3, max_steps=$STEPS, patch=128, batch_size=8,
      lr=5e-4, ema_decay=0.995, end='$TRAIN_END', device='$DEVICE', loader_threads=3, save_every=100,
      val_every=200, ${4:-}))" > $W/train_$2.log 2>&1
}
# MODELS: "name:kind:lags[:extra keywords]" separated by spaces
L4="[0,-15,-30,-45]"
MODELS=${MODELS:-"unet:unet:$L4 ddpm:ddpm:$L4 flow:flow:$L4 residual-flow:residual-flow:$L4 residual-flow-1lag:residual-flow:[0]"}
CK=""
for m in $MODELS; do
  IFS=: read -r name kind lags extra <<< "$m"; train "$kind" "$name" "$lags" "$extra" & CK="$CK $W/ck/$name"
done
wait; el trained; for d in $CK; do echo "$d $(python3 -c "import json; c=json.load(open('$d/card.json')); print(c['steps'], c.get('validation'))")"; done
python3 scripts/gpu_study.py ensembles $OUTDIR/ensembles.npz $A $EVAL 16 8 $CK
el ensembles
[ -n "${STEPS_LIST-default}" ] && STEPS_LIST=${STEPS_LIST:-"1 2 4 8 64"} python3 scripts/gpu_study.py steps $OUTDIR/rf_steps.npz $A $EVAL 8 8 $W/ck/residual-flow
el steps
tar czf $OUTDIR/logs.tgz -C $W $(cd $W && ls *.log ck/*/card.json ck/*/train_log.jsonl 2>/dev/null)
[ -z "${SKIP_CKPT:-}" ] && tar cf - -C $W ck/residual-flow/weights.safetensors ck/residual-flow/card.json ck/ddpm/weights.safetensors ck/ddpm/card.json | split -b 15m - $OUTDIR/ck.tar.part-
for f in ensembles rf_steps; do [ -f $OUTDIR/$f.npz ] && split -b 15m $OUTDIR/$f.npz $OUTDIR/$f.npz.part- && rm $OUTDIR/$f.npz; done  # files come back up to 16 MB
el done; ls -la $OUTDIR
