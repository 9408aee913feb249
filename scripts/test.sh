#!/usr/bin/env bash
# The whole test suite (the README's second command):   bash scripts/test.sh
# (with arguments, they replace pytest's default target: bash scripts/test.sh test/test_x.py)
# ruff, mypy over the typed core, then pytest over test/ in the environment scripts/setup.sh
# built. Every step runs; the script fails if any failed, and when pytest collects no tests.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ ! -x .venv/bin/python ]]; then
  echo "[test] .venv does not exist: run bash scripts/setup.sh first" >&2
  exit 1
fi
set +u
# shellcheck disable=SC1091
source scripts/env.sh
set -u
# Always on localhost here, whatever the caller's shell says: tests start DDS participants.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST

failed=()
step() {
  local name=$1
  shift
  echo "[test] $name: $*"
  local rc=0
  "$@" || rc=$?
  if [[ $rc -eq 5 && $name == pytest ]]; then
    echo "[test] pytest collected no tests: that is a failure" >&2
  fi
  if [[ $rc -ne 0 ]]; then
    failed+=("$name (exit $rc)")
  fi
}

START=$SECONDS
step ruff .venv/bin/ruff check .
MYPY_TARGETS=(ditta_ros)   # the whole package; the engine with the strictest settings
run_mypy() {
  local rc=0
  .venv/bin/mypy "${MYPY_TARGETS[@]}" || rc=$?
  if [[ $rc -eq 2 ]]; then
    # exit 2 is mypy crashing, not type errors: typically a cache left half-written by a
    # concurrent or interrupted run. Retry once with a fresh cache.
    echo "[test] mypy crashed (exit 2); retrying with a fresh cache" >&2
    rm -rf .mypy_cache
    rc=0
    .venv/bin/mypy "${MYPY_TARGETS[@]}" || rc=$?
  fi
  return $rc
}
step mypy run_mypy
if [[ $# -gt 0 ]]; then
  step pytest .venv/bin/pytest "$@"     # e.g. bash scripts/test.sh test/test_foundation.py -x
else
  step pytest .venv/bin/pytest test --durations=15   # the slowest tests, to keep CI short
fi

if [[ ${#failed[@]} -ne 0 ]]; then
  echo "[test] FAILED after $((SECONDS - START)) s: ${failed[*]}" >&2
  exit 1
fi
echo "[test] all passed in $((SECONDS - START)) s"
