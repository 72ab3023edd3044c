#!/usr/bin/env bash
# Deploy the pipeline onto a running Ray cluster (see ../ray_cluster.yaml).
#   deploy/deploy.sh deploy/pipeline.yaml [section.key=value ...]
# Creates the Kafka topics if missing and submits the pipeline as a Ray job, so it keeps
# running after this shell exits; `ray job logs -f ID` follows it, `ray job stop ID` stops it.
set -euo pipefail
config=${1:?usage: deploy/deploy.sh CONFIG.yaml [overrides...]}
shift
address=${RAY_ADDRESS:-http://127.0.0.1:8265}
ray job submit --address "$address" --no-wait --working-dir "$(dirname "$0")/.." \
    -- reidstream run "$config" --address auto "$@"
