#!/usr/bin/env bash
# One line per set-up step: the step's whole output goes to a log file, which is named, with
# its last lines, only when the step fails (pip's and apt's logs are long, and on success
# nobody reads them).
#
#   scripts/step.sh NAME "what it does" COMMAND [ARG...]     # from make
#   source scripts/step.sh; step NAME "what it does" COMMAND  # from a script
# COMMAND may be a function of the script; it runs where bash ignores `set -e` (the left of
# an `||`), so such a function chains its commands with &&.
# The log is $TTI_LOG_DIR/NAME.log (default: build/logs/ of the checkout), rewritten each time.

# The checkout's build/logs/, found with bash alone (no dirname).
step_source=${BASH_SOURCE[0]}
[[ $step_source == */* ]] || step_source=./$step_source
step_log_dir=${TTI_LOG_DIR:-$(cd "${step_source%/*}/.." && pwd)/build/logs}

# step_log NAME: the log's path, relative to the current folder when under it.
step_log() {
  local path="$step_log_dir/$1.log"
  printf '%s\n' "${path#"$PWD"/}"
}

step() {
  local name=$1 what=$2 log rc=0
  shift 2
  log=$(step_log "$name")
  mkdir -p "$step_log_dir"
  printf '==> %s\n' "$what"
  "$@" >"$log" 2>&1 || rc=$?
  if ((rc != 0)); then
    {
      printf '==> failed (exit %d): %s; the last lines of its log:\n' "$rc" "$what"
      tail -n 25 "$log" | sed 's/^/    | /'
      printf '==> full log: %s\n' "$log"
    } >&2
    return "$rc"
  fi
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  set -euo pipefail
  (($# >= 3)) || { echo "usage: $0 NAME WHAT COMMAND [ARG...]" >&2; exit 2; }
  step "$@"
fi
