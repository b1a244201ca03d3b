#!/usr/bin/env bash
# The demo pair's benchmarks (docs/benchmarks.md): plain vs speculative by prompt kind at T=0 and T=1 (the default
# engine, with prompt lookup, and without it), the drafter
# ablation (eagle / hass / hass+csra / coral with router), router on/off, adaptive vs fixed depth, a tree-size sweep, and llama.cpp on the
# same weights; every run but the defaults without prompt lookup, so that rows differ only in the drafter and the tree.
# Interleaved in one process per run; medians. Writes JSON under $OUT (default artifacts/bench) and the
# plots under docs/benchmarks/.
#   env: ROUNDS (2), TOKENS (64), SWEEP ("4 8 16 32"), TREE (16), OUT
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="${OUT:-$root/artifacts/bench}"
models="$root/samples/models"
prompts="$root/eng/demo/bench-prompts.jsonl"
mkdir -p "$out" "$root/docs/benchmarks"
dotnet build "$root/src/Coral.Cli" -c Release -v q -nologo >/dev/null
coral="$root/src/Coral.Cli/bin/Release/net10.0/coral"
bench() { "$coral" bench --model "$models/coral-demo-chat" --prompts "$prompts" --max-new-tokens "${TOKENS:-64}" --json "$@"; }

bench --draft "$models/coral-demo-chat-drafter" --rounds "${ROUNDS:-2}" > "$out/coral-t0.json"
bench --draft "$models/coral-demo-chat-drafter" --rounds "${ROUNDS:-2}" --prompt-lookup 0 > "$out/coral-t0-no-lookup.json"
bench --draft "$models/coral-demo-chat-drafter" --rounds "${ROUNDS:-2}" --temperature 1 > "$out/coral-t1.json"
bench --draft "$models/coral-demo-chat-drafter" --rounds "${ROUNDS:-2}" --temperature 1 --prompt-lookup 0 > "$out/coral-t1-no-lookup.json"
bench --draft "$models/coral-demo-chat-drafter" --rounds 1 --temperature 1 --router-topk 0 --prompt-lookup 0 > "$out/coral-t1-router-off.json"
# What speculation itself does at T=0: every step a cycle (the default falls back to plain steps when those measure faster).
bench --draft "$models/coral-demo-chat-drafter" --rounds "${ROUNDS:-2}" --no-plain-fallback --prompt-lookup 0 > "$out/coral-t0-cycles.json"
# Tree-size sweep of the coral drafter: fixed node budgets instead of the auto-tuned one.
sweep=()
for n in ${SWEEP:-4 8 16 32}; do
  bench --draft "$models/coral-demo-chat-drafter" --rounds 1 --tree-tokens "$n" --no-plain-fallback --prompt-lookup 0 > "$out/sweep-$n.json"
  sweep+=("$n nodes=$out/sweep-$n.json")
done
# Top-1 chains (one candidate per level, depth + 1 nodes), cycles only: the shapes the tuner weighs against trees.
for dd in 2 3 4; do
  bench --draft "$models/coral-demo-chat-drafter" --rounds 1 --tree-depth "$dd" --tree-topk 1 --no-plain-fallback --prompt-lookup 0 > "$out/chain-$dd.json"
done
# The ablation at one fixed tree size (TREE nodes, 16 by default), so that rows differ only in the drafter: eagle, hass,
# hass+csra with the full head, coral (the same drafter with its router), router off, fixed depth. Cycles only: with the
# plain fallback the rows would mostly be plain steps, and τ would come from a handful of exploration cycles.
tree=(--tree-tokens "${TREE:-16}" --no-plain-fallback)
for m in eagle hass hass-csra; do
  bench --draft "$models/coral-demo-chat-drafter-$m" --rounds 1 "${tree[@]}" --prompt-lookup 0 > "$out/ablation-$m.json"
done
bench --draft "$models/coral-demo-chat-drafter" --rounds 1 "${tree[@]}" --prompt-lookup 0 > "$out/ablation-coral.json"
bench --draft "$models/coral-demo-chat-drafter" --rounds 1 "${tree[@]}" --router-topk 0 --prompt-lookup 0 > "$out/coral-router-off.json"
bench --draft "$models/coral-demo-chat-drafter" --rounds 1 "${tree[@]}" --fixed-depth --prompt-lookup 0 > "$out/coral-fixed-depth.json"
"$coral" plot --bench "greedy (T=0)=$out/coral-t0.json,sampling (T=1)=$out/coral-t1.json" --out "$root/docs/benchmarks/demo" --title "coral-demo-chat + CORAL drafter:"
"$coral" plot --bench "eagle=$out/ablation-eagle.json,hass=$out/ablation-hass.json,hass+csra=$out/ablation-hass-csra.json,coral+router=$out/ablation-coral.json" \
  --out "$root/docs/benchmarks/ablation" --title "drafter ablation (T=0, ${TREE:-16} nodes):"
"$coral" plot --sweep "$(IFS=,; echo "${sweep[*]}")" --out "$root/docs/benchmarks/tree-sweep.png" --title "coral drafter, T=0:"
dotnet run -c Release --project "$root/eng/Coral.Bench" -- --model "$models/coral-demo-chat" --draft "$models/coral-demo-chat-drafter" \
  --tokens 64 --rounds 5 --out "$out/llama-cpp.md"
