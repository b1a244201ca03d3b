#!/usr/bin/env python3
"""Markdown tables for docs/benchmarks.md from eng/demo/bench.sh's JSON files: python3 eng/demo/report.py [artifacts/bench]"""
import json
import os
import sys

d = sys.argv[1] if len(sys.argv) > 1 else "artifacts/bench"


def load(name):
    p = os.path.join(d, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None


def row(label, s, extra=""):
    same = s.get("greedy_identical")
    return (f"| {label} | {s['mean_accepted_length']:.2f} | {s['plain_tokens_per_second']:.1f} | {s['speculative_tokens_per_second']:.1f} "
            f"| {s['speedup']:.2f} | {s['draft_time_share']:.2f} | {'' if same is None else ('yes' if same else 'NO')} |{extra}")


for name, title in [("coral-t0", "Greedy (T=0)"), ("coral-t1", "Sampling (T=1)")]:
    b = load(name)
    if not b:
        continue
    t = b["tree"]
    print(f"### {title}: coral drafter with router, by prompt kind\n")
    print(f"{b['rounds']} rounds × {len(b['prompts'])} prompts, ≤ {b['max_new_tokens']} new tokens, dtype {b['dtype']}, tree {t['total_tokens']} nodes "
          f"depth ≤ {t['depth']} top-k {t['top_k']} router top-k {t['router_top_k']}; adaptive depth ended at {t.get('final_depth')}, "
          f"P(≥ j accepted) = {t.get('reach_by_depth')}\n")
    print("| kind | τ | plain tok/s | speculative tok/s | speedup | draft share | greedy identical |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind, s in b["by_kind"].items():
        print(row(kind, s))
    print(row("**all**", b["overall"]))
    print(f"\ndraft step ms: {b['draft_step_ms']}; verify ms by tree size: {b['verify_ms_by_tree_size']}\n")

print("### Drafter ablation (T=0, same data, steps and seed)\n")
print("| drafter | τ | plain tok/s | speculative tok/s | speedup | draft share | greedy identical | draft step ms |")
print("| --- | --- | --- | --- | --- | --- | --- | --- |")
for name, label in [("ablation-eagle", "eagle"), ("ablation-hass", "hass"), ("ablation-hass-csra", "hass + csra (full head)"),
                    ("coral-t0", "coral (hass + csra + router)"), ("coral-fixed-depth", "coral, fixed depth 5")]:
    b = load(name)
    if b:
        ms = b["draft_step_ms"]
        step = ms["router"] if ms.get("router") is not None and "coral" in label else ms["full_head"]
        print(row(label, b["overall"], f" {step:.2f} |"))
