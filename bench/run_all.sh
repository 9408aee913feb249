#!/usr/bin/env bash
# The whole bench suite in one command (issue 7). Results: bench/results/*.{md,json} (and
# bench_addon.txt, soak.csv, soak.png); a combined bench/results/SUMMARY.md at the end.
#
#   bench/run_all.sh [--quick] [--device cpu|cuda|cuda:N] [--threads N] [--skip NAME]...
#
#   --quick      the short variant for a loaded CPU: fewer sizes and repeats, 15 s loads,
#                a 1-minute soak (about 22 min measured on 2 busy cores; the full run takes hours
#                on a CPU and is meant for a GPU machine)
#   --device     torch device for every script (default cpu)
#   --threads N  torch CPU threads per process (default: 1 with --quick, torch's default
#                otherwise); also OMP_NUM_THREADS for the node process
#   --skip NAME  leave out engine, addon, adaptation, node, load or soak (repeatable)
#
# Every script is also runnable on its own: python bench/<script>.py --help.
# Python: $PYTHON, else .venv/bin/python when it exists, else python3.
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then
    PY=.venv/bin/python
else
    PY=python3
fi

QUICK=()
DEVICE=cpu
THREADS=""
SKIP=" "
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=(--quick); shift ;;
        --device) DEVICE="$2"; shift 2 ;;
        --threads) THREADS="$2"; shift 2 ;;
        --skip) SKIP+="$2 "; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "run_all.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
if [[ -z "$THREADS" && ${#QUICK[@]} -gt 0 ]]; then
    THREADS=1
fi
THREAD_ARGS=()
if [[ -n "$THREADS" ]]; then
    THREAD_ARGS=(--threads "$THREADS")
    export OMP_NUM_THREADS="$THREADS"
fi

# DDS never leaves this machine; one domain for this run.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-$((10 + $$ % 90))}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

OUT=bench/results
mkdir -p "$OUT"
FAILED=()

run() {
    local name="$1"; shift
    if [[ "$SKIP" == *" $name "* ]]; then
        echo "== $name: skipped"
        return
    fi
    echo "== $name: $*  ($(date -u '+%Y-%m-%d %H:%M UTC'), load $(cut -d' ' -f1 /proc/loadavg))"
    local start=$SECONDS
    if "$@"; then
        echo "== $name: done in $((SECONDS - start)) s"
    else
        echo "== $name: FAILED (exit $?) after $((SECONDS - start)) s" >&2
        FAILED+=("$name")
    fi
}

run engine "$PY" bench/bench_engine.py "${QUICK[@]}" --device "$DEVICE" "${THREAD_ARGS[@]}"
if [[ "$SKIP" != *" addon "* ]]; then
    run addon bash -c '"$0" bench/bench_addon.py "${@}" | tee bench/results/bench_addon.txt' \
        "$PY" "${QUICK[@]}" --device "$DEVICE" "${THREAD_ARGS[@]}"
fi
run adaptation "$PY" bench/bench_adaptation.py "${QUICK[@]}" --device "$DEVICE" \
    "${THREAD_ARGS[@]}"
run node "$PY" bench/bench_node.py "${QUICK[@]}" --device "$DEVICE" "${THREAD_ARGS[@]}"
run load "$PY" bench/bench_load.py "${QUICK[@]}" --device "$DEVICE" "${THREAD_ARGS[@]}"
run soak "$PY" bench/soak.py "${QUICK[@]}" --device "$DEVICE" "${THREAD_ARGS[@]}"

{
    echo "# Bench suite results ($(date -u '+%Y-%m-%d %H:%M UTC'))"
    echo
    echo "Command: \`bench/run_all.sh ${QUICK[*]} --device $DEVICE${THREADS:+ --threads $THREADS}\`"
    for name in bench_engine bench_adaptation bench_node bench_load soak; do
        if [[ -f "$OUT/$name.md" ]]; then
            echo
            echo "## $name"
            echo
            cat "$OUT/$name.md"
        fi
    done
    if [[ -f "$OUT/bench_addon.txt" ]]; then
        printf '\n## bench_addon\n\n```\n'
        cat "$OUT/bench_addon.txt"
        printf '```\n'
    fi
} > "$OUT/SUMMARY.md"
echo "== summary: $OUT/SUMMARY.md"

if [[ ${#FAILED[@]} -gt 0 ]]; then
    echo "== failed: ${FAILED[*]}" >&2
    exit 1
fi
