# shellcheck shell=bash
# Helpers sourced by launch/tpu_vm.sh and launch/slurm_submit.sh; the sourcing script defines usage().

DRY_RUN=0

# Prints an error and the usage to stderr, and exits 2.
die() {
  echo "error: $*" >&2
  echo >&2
  usage >&2
  exit 2
}

# Shell-quotes one word for a command line: plain words as they are, anything else in single quotes.
q() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf '%s' "${1@Q}"
  fi
}

# Refuses an option ($1) without a value ($2).
need_value() {
  [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || die "$1 needs a value."
}

# Sets DRY_RUN=1 if --dry-run (or --dry_run) is anywhere in "$@", also after `--`, and leaves the other
# arguments, in order, in ARGS: a dry run never passes the flag on to a command that would run.
strip_dry_run() {
  ARGS=()
  local arg
  for arg in "$@"; do
    if [[ "$arg" == --dry-run || "$arg" == --dry_run ]]; then
      DRY_RUN=1
    else
      ARGS+=("$arg")
    fi
  done
}

# Runs a command, or prints it (quoted, copy-pasteable) with --dry-run (DRY_RUN=1).
run_cmd() {
  if [[ "$DRY_RUN" == 1 ]]; then
    local line="+" arg
    for arg in "$@"; do line+=" $(q "$arg")"; done
    printf '%s\n' "$line"
  else
    "$@"
  fi
}
