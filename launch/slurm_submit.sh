#!/usr/bin/env bash
# Submits launch/slurm_gpu.sbatch with the given cluster shape; --dry-run prints the sbatch command.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=_common.sh
source "$SCRIPT_DIR/_common.sh"

usage() {
  cat <<'USAGE'
Usage: launch/slurm_submit.sh --config FILE[:PRESET] --workdir DIR [options] [-- TRAIN_FLAGS...]
       launch/slurm_submit.sh --evaluate [options] -- EVALUATE_FLAGS...

Submits a multi-node GPU run (launch/slurm_gpu.sbatch): one process per node, all of its GPUs, jax's
SLURM auto-detection for the distributed runtime, SIGTERM 2 minutes before the time limit (checkpoint,
exit 0, requeue resumes).

Options:
  --config FILE[:PRESET]  experiment config (required)
  --workdir DIR           run directory on a shared file system or gs:// (required)
  --nodes N               nodes (default 2)
  --gpus-per-node G       GPUs per node (default 8)
  --partition P           SLURM partition
  --account A             SLURM account
  --time T                time limit, e.g. 24:00:00
  --job-name NAME         job name (default lime_jax)
  --evaluate              run lime_jax.evaluate instead of training (no --config / --workdir; its flags
                          after --, e.g. -- --hf=/shared/models/big --out=/shared/eval/big --mesh_fsdp=16)
  --dry-run               print the sbatch command instead of running it (anywhere, also after --)
  -h, --help              this help
Flags after `--` go to lime_jax.main (e.g. -- --config.train.num_steps=100).
USAGE
}

CONFIG=""
WORKDIR=""
NODES=2
GPUS=8
PARTITION=""
ACCOUNT=""
TIME=""
JOB_NAME="lime_jax"
TRAIN_FLAGS=()
EVALUATE=0
[[ $# -gt 0 ]] || { usage >&2; exit 2; }
# --dry-run anywhere, also among the training flags after `--`, makes the whole call a dry run.
strip_dry_run "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --evaluate) EVALUATE=1; shift ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --nodes) need_value "$@"; NODES="$2"; shift 2 ;;
    --gpus-per-node) need_value "$@"; GPUS="$2"; shift 2 ;;
    --partition) need_value "$@"; PARTITION="$2"; shift 2 ;;
    --account) need_value "$@"; ACCOUNT="$2"; shift 2 ;;
    --time) need_value "$@"; TIME="$2"; shift 2 ;;
    --job-name) need_value "$@"; JOB_NAME="$2"; shift 2 ;;
    --) shift; TRAIN_FLAGS=("$@"); break ;;
    *) die "unknown argument '$1'." ;;
  esac
done
if [[ "$EVALUATE" == 0 ]]; then
  [[ -n "$CONFIG" ]] || die "--config is required."
  [[ -n "$WORKDIR" ]] || die "--workdir is required."
else
  [[ -z "$CONFIG$WORKDIR" ]] \
    || die "--evaluate takes lime_jax.evaluate's flags after -- (not --config / --workdir)."
  [[ ${#TRAIN_FLAGS[@]} -gt 0 ]] || die "--evaluate needs lime_jax.evaluate's flags after --."
fi
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer."
[[ "$GPUS" =~ ^[1-9][0-9]*$ ]] || die "--gpus-per-node must be a positive integer."

cmd=(sbatch --job-name="$JOB_NAME" --nodes="$NODES" --ntasks-per-node=1 --gpus-per-node="$GPUS")
[[ -z "$PARTITION" ]] || cmd+=(--partition="$PARTITION")
[[ -z "$ACCOUNT" ]] || cmd+=(--account="$ACCOUNT")
[[ -z "$TIME" ]] || cmd+=(--time="$TIME")
if [[ "$EVALUATE" == 1 ]]; then
  cmd+=("$SCRIPT_DIR/slurm_gpu.sbatch" --evaluate "${TRAIN_FLAGS[@]}")
else
  cmd+=("$SCRIPT_DIR/slurm_gpu.sbatch" --config="$CONFIG" --workdir="$WORKDIR" "${TRAIN_FLAGS[@]}")
fi

run_cmd "${cmd[@]}"
