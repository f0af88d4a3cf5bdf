#!/usr/bin/env bash
# The README's TensorBoard screenshots, from real runs, with headless Chromium:
#   bash docs/screenshots.sh LOGDIR   (needs apt-get install -y chromium; pip install websocket-client)
# e.g. LOGDIR = runs/sweep_quickstart/seed_0/adapt after python scripts/sweep.py
# configs/quickstart/sweep.yaml. Writes docs/tensorboard_time_series.png and
# docs/tensorboard_hparams.png.
set -euo pipefail
logdir=${1:?usage: bash docs/screenshots.sh LOGDIR}
cd "$(dirname "$0")"
port=6123
tensorboard --logdir "$logdir" --port "$port" --load_fast=false > /tmp/tensorboard_screenshots.log 2>&1 &
board=$!
trap 'kill $board' EXIT
for _ in $(seq 60); do curl -sf "http://localhost:$port/data/runs" > /dev/null && break; sleep 1; done
sleep 10  # the first load of the event files
python screenshot.py "http://localhost:$port/?tagFilter=train%2Floss_step%7Ctest%2Fmean%2Facc#timeseries" \
  tensorboard_time_series.png
python screenshot.py "http://localhost:$port/#hparams" tensorboard_hparams.png
echo "wrote docs/tensorboard_time_series.png docs/tensorboard_hparams.png"
