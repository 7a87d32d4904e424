#!/usr/bin/env bash
# hack/heartbeat.sh LABEL COMMAND...: run COMMAND, printing "[LABEL Ns] still running"
# to stderr every 30 s, so that a quiet, long step (a pip install of a few GB) shows
# it is alive. Exits with COMMAND's status.
set -uo pipefail
label="$1"; shift
start=$(date +%s)
"$@" &
pid=$!
(
  while sleep 30; do
    kill -0 "$pid" 2>/dev/null || exit 0
    printf '[%s %4ss] still running: %s\n' "$label" "$(( $(date +%s) - start ))" "$1" >&2
  done
) &
beat=$!
wait "$pid"
status=$?
kill "$beat" 2>/dev/null
wait "$beat" 2>/dev/null
printf '[%s %4ss] done (exit %s)\n' "$label" "$(( $(date +%s) - start ))" "$status" >&2
exit "$status"
