#!/usr/bin/env bash
# Draw every figure that the results allow (run from the repository root).
#   plots/make_figures.sh [JSON_DIR] [OUT_DIR]
#       draws figures 11-13 (both scorers), the live sweeps and figures 14-16 from the results in JSON_DIR
#       (default plots/json) into OUT_DIR (default plots/out).
#   plots/make_figures.sh --simulate [DEVICE]
#       first writes the paper's workload grid (workloads/paper/, kept if there), simulates every panel of
#       figures 11-13 with every system on DEVICE's profiles (default H100) into plots/json/DEVICE, then
#       draws them into plots/out/DEVICE and prints the headline table (`aegaeon bench headline`).
#   plots/make_figures.sh --simulate A10
#       figure 17's A10 panel instead (its node shape is stated below), into plots/json/A10 and plots/out/A10.
set -uo pipefail
panels="0.1 0.5 40 0.1-ix2 0.1-ox2 0.5-ix2 0.5-ox2 slo0.5 slo0.3"
if [ "${1:-}" = "--simulate" ] && [ "${2:-}" = "A10" ]; then
    # figure 17's A10 panel: a node of 8 A10s (a common 8-GPU A10 server; Aegaeon splits it 2 prefill +
    # 6 decode, a quarter, as on the H100 node) serving Yi-1.5-6B-Chat and Qwen2.5-7B, 4..10 models at
    # 0.1 req/s over 120 s, TTFT 5 s with TPOT 0.1 / 0.05 / 0.2 s. Not MuxServe: its 20 GiB of KV per placed
    # model does not fit next to a 7B on a 24 GB device. Not the artifact's baselines: it states no sizes for
    # Yi-1.5-6B.
    set -e
    json=plots/json/A10
    out=plots/out/A10
    for tpot in 0.1 0.05 0.2; do
        aegaeon sim --device A10 --num-gpus 8 --mix qwen2_5_7b,yi1_5_6b_chat --num-models 4:10:1 \
            --arrival-rate 0.1 --duration 120 --ttft-slo 5 --tpot-slo "$tpot" --policy aegaeon,sllm,sllm+ \
            --workloads workloads/a10 --out "$json" | tail -n 1
    done
    set +e
    panels="a10-tpot0.1 a10-tpot0.05 a10-tpot0.2"
elif [ "${1:-}" = "--simulate" ]; then
    set -e
    device=${2:-H100}
    json=plots/json/$device
    out=plots/out/$device
    work=workloads/paper
    policies=aegaeon,sllm,sllm+,sllm-ae,sllm+-ae,muxserve
    if [ ! -f "$work/synth-80-0.5-1.0-2.0.csv" ]; then
        aegaeon workload gen --paper-grid --out "$work"
    fi
    sim() {
        local start=$SECONDS
        aegaeon sim --device "$device" --policy "$policies" --workloads "$work" --out "$json" "$@" | tail -n 1
        echo "  $((SECONDS - start)) s" >&2
    }
    echo "figure 11(a)" >&2; sim --num-models 16:80:4 --arrival-rate 0.1
    echo "figure 11(b)" >&2; sim --num-models 16:54:2 --arrival-rate 0.5
    echo "figure 11(c)" >&2; sim --num-models 40 --arrival-rate 0.05:0.7:0.05
    for scale in "--inlen-scale 2" "--outlen-scale 2"; do
        echo "figure 12 ($scale)" >&2
        sim --num-models 16:80:4 --arrival-rate 0.1 $scale
        sim --num-models 16:54:2 --arrival-rate 0.5 $scale
    done
    for slo in 0.5 0.3; do
        echo "figure 13 (SLOs x$slo)" >&2; sim --num-models 16:80:4 --arrival-rate 0.1 --slo-scale "$slo"
    done
    set +e
    aegaeon bench headline --json-dir "$json"
else
    json=${1:-plots/json}
    out=${2:-plots/out}
fi
if [ ! -d "$json" ]; then
    echo "no results in $json: run \`aegaeon sim\`, \`aegaeon bench e2e\` or plots/make_figures.sh --simulate first" >&2
    exit 1
fi
drawn=0
for spec in $panels; do
    for scorer in ours paper; do
        aegaeon plot e2e --spec "$spec" --scorer "$scorer" --json-dir "$json" --out "$out" >/dev/null 2>&1 && drawn=$((drawn + 1))
    done
done
aegaeon plot e2e --live --json-dir "$json" --out "$out" >/dev/null 2>&1 && drawn=$((drawn + 1))
for figure in breakdown autoscale-cdf kvcache-cdf frag; do
    aegaeon plot "$figure" --json "$json" --out "$out" >/dev/null 2>&1 && drawn=$((drawn + 1))
done
echo "$drawn figure(s) in $out" >&2
[ "$drawn" -gt 0 ]
