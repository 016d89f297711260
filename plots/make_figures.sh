#!/usr/bin/env bash
# Draw every figure that the results in plots/json/ allow (run from the repository root).
# Usage: plots/make_figures.sh [JSON_DIR] [OUT_DIR]
set -uo pipefail
json=${1:-plots/json}
out=${2:-plots/out}
if [ ! -d "$json" ]; then
    echo "no results in $json: run \`aegaeon sim\` or \`aegaeon bench e2e\` first" >&2
    exit 1
fi
drawn=0
for spec in 0.1 0.5 40 0.1-ix2 0.1-ox2 0.5-ix2 0.5-ox2 slo0.5 slo0.3; do
    aegaeon plot e2e --spec "$spec" --json-dir "$json" --out "$out" 2>/dev/null && drawn=$((drawn + 1))
done
aegaeon plot e2e --live --json-dir "$json" --out "$out" 2>/dev/null && drawn=$((drawn + 1))
for figure in breakdown autoscale-cdf kvcache-cdf frag; do
    aegaeon plot "$figure" --json "$json" --out "$out" && drawn=$((drawn + 1))
done
echo "$drawn figure(s) in $out" >&2
[ "$drawn" -gt 0 ]
