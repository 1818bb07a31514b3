#!/usr/bin/env bash
# Run one jaxproto command on every worker of a Cloud TPU VM pod.
#
#   launch/tpu_pod.sh --tpu my-v4-32 --zone us-central2-b [--project P] [--dry-run] \
#       [--setup "pip install -e ."] -- \
#       python -m jaxproto.train --config configs/cipl_chestxray14.py \
#       --config.data.root=/mnt/data/nih --workdir gs://my-bucket/runs/cipl
#
# Every worker runs the same command; jax.distributed.initialize() auto-detects the pod
# (jaxproto does this when TPU_WORKER_HOSTNAMES lists several hosts). Data and workdir must be
# visible to all workers: a GCS bucket (gs://...) or a shared filesystem. The repository is
# copied to ~/jaxproto on each worker first. --dry-run prints the commands instead.
set -euo pipefail
TPU="" ZONE="" PROJECT="" DRY=0 SETUP="pip install -q -e ."
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --setup) SETUP="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n "$TPU" && -n "$ZONE" && $# -gt 0 ]] || { echo "need --tpu, --zone and a command after --" >&2; exit 2; }
REPO="$(cd "$(dirname "$0")/.." && pwd)"
EXTRA=()
[[ -n "$PROJECT" ]] && EXTRA+=(--project "$PROJECT")
CMD="$(printf '%q ' "$@")"
run() { if [[ $DRY == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi; }
run gcloud compute tpus tpu-vm scp --recurse "$REPO" "$TPU":~/jaxproto --zone "$ZONE" --worker=all "${EXTRA[@]}"
run gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all "${EXTRA[@]}" \
  --command "cd ~/jaxproto && $SETUP && $CMD"
