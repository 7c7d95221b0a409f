#!/usr/bin/env bash
# Cloud TPU VM slices for lime_jax: create, set up, sync code, run on every worker, tail, stop, delete.
# Run with --help for usage; --dry-run prints every command instead of running it.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(dirname "$SCRIPT_DIR")"
# shellcheck source=_common.sh
source "$SCRIPT_DIR/_common.sh"

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh COMMAND --name NAME --zone ZONE [options] [-- FLAGS...]

Commands:
  create   Create the slice: a spot TPU VM (--spot), or a queued resource (--queued) that waits for
           capacity; needs --accelerator (e.g. v5litepod-16, v4-32).
  setup    On every worker: pip install -e the synced code with its [tpu] extra ("jax[tpu]", gcsfs and
           google-cloud-storage: gs:// for orbax, tfds, TensorBoard), then check that jax sees the TPU.
  sync     Copy this checkout (without .git and caches) to every worker (--remote-dir).
  run      Start `python -m lime_jax.main` on every worker, detached in a tmux session named lime,
           logging to ~/lime_logs/<hostname>.log on each worker; needs --config and --workdir gs://...
           Flags after `--` go to lime_jax.main (e.g. -- --config.train.num_steps=100).
  evaluate Start `python -m lime_jax.evaluate` on every worker the same way (one jax process per
           worker, joined by jax.distributed); flags after `--` go to lime_jax.evaluate, e.g.
           -- --hf=gs://b/models/gemma-2-27b --out=gs://b/eval/gemma27b --mesh_fsdp=16 --probes=entropy
           (a model larger than one chip: its parameters are read straight into their shards).
  tail     Follow a worker's log (--worker N, default 0; `all` prints the last lines of every worker).
  stop     Send SIGTERM to the training process on every worker: jax's preemption service makes all
           workers checkpoint one agreed step and exit 0. `run` again with the same flags resumes.
  delete   Delete the slice (and its queued resource with --queued).

Options:
  --name NAME           TPU VM name (required)
  --zone ZONE           GCP zone, e.g. us-central2-b (required)
  --project PROJECT     GCP project (default: gcloud's configured project)
  --accelerator TYPE    accelerator type (create)
  --version VERSION     TPU software version (create; default tpu-ubuntu2204-base)
  --spot                spot capacity (create)
  --queued              use a queued resource named NAME-qr (create, delete)
  --config FILE[:PRESET]  experiment config, relative to the code dir (run)
  --workdir gs://BUCKET/PATH  run directory on GCS (run): checkpoints, metrics, TensorBoard
  --worker N|all        worker for tail (default 0)
  --remote-dir DIR      code directory on the workers, relative to home (default lime_jax)
  --dry-run             print the commands instead of running them (anywhere, also after --)
  -h, --help            this help

Example:
  launch/tpu_vm.sh create --name lime --zone us-central2-b --accelerator v4-32 --spot
  launch/tpu_vm.sh sync   --name lime --zone us-central2-b
  launch/tpu_vm.sh setup  --name lime --zone us-central2-b
  launch/tpu_vm.sh run    --name lime --zone us-central2-b --config experiments/baseline.py:paper \
      --workdir gs://my-bucket/runs/baseline -- --config.data.text.data_dir=gs://my-bucket/tfds
  launch/tpu_vm.sh tail   --name lime --zone us-central2-b --worker 0
  launch/tpu_vm.sh evaluate --name lime --zone us-central2-b -- --hf=gs://my-bucket/models/llama-70b \
      --out=gs://my-bucket/eval/llama70b --mesh_fsdp=16 --param_dtype=bfloat16 --probes=entropy
EOF
}

COMMAND=""
NAME=""
ZONE=""
PROJECT=""
ACCELERATOR=""
VERSION="tpu-ubuntu2204-base"
SPOT=0
QUEUED=0
CONFIG=""
WORKDIR=""
WORKER="0"
REMOTE_DIR="lime_jax"
TRAIN_FLAGS=()

[[ $# -gt 0 ]] || { usage >&2; exit 2; }
# --dry-run anywhere, also among the training flags after `--`, makes the whole call a dry run.
strip_dry_run "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --accelerator) need_value "$@"; ACCELERATOR="$2"; shift 2 ;;
    --version) need_value "$@"; VERSION="$2"; shift 2 ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --worker) need_value "$@"; WORKER="$2"; shift 2 ;;
    --remote-dir) need_value "$@"; REMOTE_DIR="$2"; shift 2 ;;
    --) shift; TRAIN_FLAGS=("$@"); break ;;
    create|setup|sync|run|evaluate|tail|stop|delete)
      [[ -z "$COMMAND" ]] || die "one command at a time (got '$COMMAND' and '$1')."
      COMMAND="$1"; shift ;;
    *) die "unknown argument '$1'." ;;
  esac
done

[[ -n "$COMMAND" ]] || die "missing COMMAND (create, setup, sync, run, evaluate, tail, stop or delete)."
[[ -n "$NAME" ]] || die "--name is required."
[[ -n "$ZONE" ]] || die "--zone is required."
[[ "$REMOTE_DIR" != /* && "$REMOTE_DIR" != *..* ]] || die "--remote-dir must be relative to home."

GCLOUD_COMMON=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || GCLOUD_COMMON+=(--project="$PROJECT")
SESSION="lime"
LOG_DIR="lime_logs"

# Runs a shell command line on the given workers over gcloud ssh.
on_workers() {
  local workers="$1" remote="$2"
  run_cmd gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_COMMON[@]}" --worker="$workers" \
    --command="$remote"
}

cmd_create() {
  [[ -n "$ACCELERATOR" ]] || die "create needs --accelerator (e.g. v4-32, v5litepod-16)."
  if [[ "$QUEUED" == 1 ]]; then
    local args=(gcloud compute tpus queued-resources create "${NAME}-qr" --node-id="$NAME"
                "${GCLOUD_COMMON[@]}" --accelerator-type="$ACCELERATOR" --runtime-version="$VERSION")
    [[ "$SPOT" == 0 ]] || args+=(--spot)
    run_cmd "${args[@]}"
    [[ "$DRY_RUN" == 1 ]] || echo "Queued; watch it with: gcloud compute tpus queued-resources describe" \
      "$(q "${NAME}-qr") --zone=$(q "$ZONE")" >&2
  else
    local args=(gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_COMMON[@]}"
                --accelerator-type="$ACCELERATOR" --version="$VERSION")
    [[ "$SPOT" == 0 ]] || args+=(--spot)
    run_cmd "${args[@]}"
  fi
}

cmd_setup() {
  # The package's [tpu] extra: jax[tpu] (libtpu), gcsfs and google-cloud-storage; then a check that jax
  # sees the TPU, so a CPU-only install fails here rather than at the first training step.
  on_workers all "set -e; command -v tmux >/dev/null || sudo apt-get install -y tmux; \
pip install -e $(q "./${REMOTE_DIR}[tpu]") \
-f https://storage.googleapis.com/jax-releases/libtpu_releases.html; \
python -c 'import jax; b = jax.default_backend(); assert b == \"tpu\", f\"jax backend is {b}, not tpu\"'"
}

cmd_sync() {
  local archive
  archive="$(mktemp -u "${TMPDIR:-/tmp}/lime_jax_code.XXXXXX").tar.gz"
  run_cmd tar -czf "$archive" -C "$REPO_DIR" --exclude=.git --exclude=__pycache__ --exclude='*.egg-info' \
    --exclude=.pytest_cache .
  run_cmd gcloud compute tpus tpu-vm scp "$archive" "$NAME:lime_jax_code.tar.gz" "${GCLOUD_COMMON[@]}" \
    --worker=all
  on_workers all "set -e; mkdir -p $(q "$REMOTE_DIR"); tar -xzf lime_jax_code.tar.gz -C $(q "$REMOTE_DIR")"
  run_cmd rm -f "$archive"
}

cmd_run() {
  [[ -n "$CONFIG" ]] || die "run needs --config FILE[:PRESET]."
  [[ -n "$WORKDIR" ]] || die "run needs --workdir gs://BUCKET/PATH."
  [[ "$WORKDIR" == gs://* ]] || die "--workdir must be a gs:// URL (every worker writes checkpoints there)."
  start_on_workers python -m lime_jax.main --config="$CONFIG" --workdir="$WORKDIR" "${TRAIN_FLAGS[@]}"
}

cmd_evaluate() {
  [[ ${#TRAIN_FLAGS[@]} -gt 0 ]] \
    || die "evaluate needs lime_jax.evaluate's flags after -- (e.g. -- --hf=gs://... --out=gs://...)."
  start_on_workers python -m lime_jax.evaluate "${TRAIN_FLAGS[@]}"
}

# Starts the command "$@" on every worker, detached in tmux, with the distributed runtime on.
start_on_workers() {
  local main_q="" arg
  for arg in "$@"; do main_q+=" $(q "$arg")"; done
  # The process runs in the background of a tmux session; its pid is kept for `stop`.
  local job
  job="cd $(q "$REMOTE_DIR") && LIME_DISTRIBUTED=auto${main_q} > ~/$LOG_DIR/\$(hostname).log 2>&1 & \
echo \$! > ~/$LOG_DIR/train.pid; wait"
  on_workers all "set -e; mkdir -p ~/$LOG_DIR; tmux kill-session -t $SESSION 2>/dev/null || true; \
tmux new-session -d -s $SESSION $(q "$job")"
  if [[ "$DRY_RUN" == 1 ]]; then
    echo "Dry run: nothing was started." >&2
  else
    echo "Started on every worker; follow with:" \
      "launch/tpu_vm.sh tail --name $(q "$NAME") --zone $(q "$ZONE")" >&2
  fi
}

cmd_tail() {
  if [[ "$WORKER" == all ]]; then
    on_workers all "tail -n 20 ~/$LOG_DIR/*.log"
  else
    [[ "$WORKER" =~ ^[0-9]+$ ]] || die "--worker must be a number or 'all'."
    on_workers "$WORKER" "tail -n 50 -F ~/$LOG_DIR/*.log"
  fi
}

cmd_stop() {
  on_workers all "if [ -f ~/$LOG_DIR/train.pid ]; then kill -TERM \$(cat ~/$LOG_DIR/train.pid) || true; fi"
}

cmd_delete() {
  if [[ "$QUEUED" == 1 ]]; then
    run_cmd gcloud compute tpus queued-resources delete "${NAME}-qr" "${GCLOUD_COMMON[@]}" --force --quiet
  else
    run_cmd gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_COMMON[@]}" --quiet
  fi
}

"cmd_$COMMAND"
