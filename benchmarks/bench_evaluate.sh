#!/usr/bin/env bash
# 07's wall time against an earlier commit's 07, on the same demo output, alternating runs.
#
#   bash benchmarks/bench_evaluate.sh --baseline REV [--repeats 3] [--output-root DIR]
#
# The baseline is checked out as a git worktree (a temporary folder) and run with the same
# interpreter (.venv, or PYTHON=...), its own shoelib first on the path. Both run
# `python -m shoelib.run --profile demo --only 07` on one single-category demo output (Casual
# Shoes), built first with this checkout's 01, 02, 05 and 06 when DIR has none. The runs
# alternate (baseline, current, baseline, ...) so that a busy spell of a shared machine hits
# both. Printed: each run's notebook time (papermill's "done in"), the medians and their ratio.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
baseline="" repeats=3 output_root=/tmp/shoelib-bench-evaluate
while [ $# -gt 0 ]; do
  case "$1" in
    --baseline) baseline=$2; shift 2 ;;
    --repeats) repeats=$2; shift 2 ;;
    --output-root) output_root=$2; shift 2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$baseline" ] || { echo "--baseline REV is required: the commit whose 07 is the baseline" >&2; exit 2; }
python=${PYTHON:-$root/.venv/bin/python}
[ -x "$python" ] || { echo "no interpreter at $python: run make install, or set PYTHON" >&2; exit 2; }

work=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$work/baseline" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$root" worktree add --detach --quiet "$work/baseline" "$baseline"

if [ ! -d "$output_root/synthetic/demo" ] || [ ! -d "$output_root/synthetic/demo_base" ]; then
  echo "building the demo output in $output_root (01, 02, 05, 06; Casual Shoes alone) ..." >&2
  (cd "$root" && "$python" -m shoelib.run --profile demo --only 01,02,05,06 \
     -p categories "[]" -p output_root "$output_root" >"$work/build.log" 2>&1) \
    || { tail -20 "$work/build.log" >&2; exit 1; }
fi

run() {  # $1 = tree, rest = extra parameters; prints 07's notebook seconds
  local tree=$1; shift
  (cd "$tree" && PYTHONPATH="$tree" "$python" -m shoelib.run --profile demo --only 07 \
     -p output_root "$output_root" "$@" >"$work/run.log" 2>&1) \
    || { tail -20 "$work/run.log" >&2; exit 1; }
  grep -o "07_evaluate\] done in [0-9.]*" "$work/run.log" | grep -o "[0-9.]*$"
}

base_times=() current_times=()
for i in $(seq "$repeats"); do
  base_times+=("$(run "$work/baseline")")
  # The current 07 reads several categories; [] keeps it to Casual Shoes, as the baseline's.
  current_times+=("$(run "$root" -p categories "[]")")
  echo "repeat $i: baseline ${base_times[-1]} s, current ${current_times[-1]} s (load $(cut -d' ' -f1 /proc/loadavg))"
done
"$python" - "$baseline" "${base_times[*]}" "${current_times[*]}" <<'EOF'
import statistics
import sys

rev, base, current = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
b, c = statistics.median(base), statistics.median(current)
print(f"07 notebook time, median of {len(base)}: baseline ({rev}) {b:.1f} s "
      f"[{min(base):.1f}-{max(base):.1f}], current {c:.1f} s [{min(current):.1f}-{max(current):.1f}], "
      f"current/baseline {c / b:.2f}")
EOF
