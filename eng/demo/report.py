#!/usr/bin/env python3
"""Markdown tables for docs/benchmarks.md from eng/demo/bench.sh's JSON files: python3 eng/demo/report.py [artifacts/bench]"""
import json
import os
import sys

d = sys.argv[1] if len(sys.argv) > 1 else "artifacts/bench"


def load(name):
    p = os.path.join(d, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None


def yes(s):
    same = s.get("greedy_identical")
    return "" if same is None else ("yes" if same else "NO")


def row(label, s, extra=""):
    return (f"| {label} | {s['mean_accepted_length']:.2f} | {s['plain_tokens_per_second']:.1f} | {s['speculative_tokens_per_second']:.1f} "
            f"| {s['speedup']:.2f} | {s['draft_time_share']:.2f} | {yes(s)} |{extra}")


def reach(b):
    """Fraction of the run's cycles that accepted at least j drafted tokens, j = 1..depth."""
    r = b["overall"].get("accepted_at_least")
    return ", ".join(f"{x:.2f}" for x in r) if r else "–"


def step_ms(b):
    ms = b["draft_step_ms"]
    routed = b["tree"]["router_top_k"] != 0 and ms.get("router") is not None
    return ms["router"] if routed else ms["full_head"]


for name, title in [("coral-t0", "Greedy (T=0), default engine (prompt lookup 3)"), ("coral-t0-no-lookup", "Greedy (T=0), without prompt lookup"),
                    ("coral-t1", "Sampling (T=1), default engine (prompt lookup 3)"), ("coral-t1-no-lookup", "Sampling (T=1), without prompt lookup"),
                    ("coral-t0-cycles", "Greedy (T=0), cycles only (`--no-plain-fallback`, no lookup)")]:
    b = load(name)
    if not b:
        continue
    t = b["tree"]
    print(f"### {title}: coral drafter with router, by prompt kind\n")
    plain = b["overall"].get("cycle_ms", {}).get("plain_step_share")
    print(f"{b['rounds']} rounds × {len(b['prompts'])} prompts, ≤ {b['max_new_tokens']} new tokens, dtype {b['dtype']}, tree auto-tuned to "
          f"{t['total_tokens']} nodes (depth ≤ {t['depth']}, top-k {t['top_k']}), adaptive depth ended at {t.get('final_depth')}, "
          f"plain-step share {plain if plain is not None else '–'}, "
          f"fraction of cycles accepting ≥ j drafted tokens (j = 1..{t['depth']}): {reach(b)}\n")
    print("| kind | τ | plain tok/s | speculative tok/s | speedup | draft share | greedy identical |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for kind, s in b["by_kind"].items():
        print(row(kind, s))
    print(row("**all**", b["overall"]))
    line = (f"\ndraft step ms: full head {b['draft_step_ms']['full_head']:.2f}, routed {b['draft_step_ms']['router']:.2f}; "
            f"verify ms by tree size: {', '.join(f'{k}: {v:.1f}' for k, v in b['verify_ms_by_tree_size'].items())}")
    o = b["overall"]
    if "cycle_ms" in o:
        c = o["cycle_ms"]
        line += (f"; one cycle: draft {c['draft']:.1f} + verify {c['verify']:.1f} + rest {c['rest']:.1f} ms for τ = "
                 f"{o['mean_accepted_length']:.2f} tokens, against {o['plain_step_ms']:.1f} ms per plain token")
        if "runs_with_drafter" in c and c["runs_with_drafter"] < c["runs"]:
            line += f"; the drafter took part in {c['runs_with_drafter']} of the {c['runs']} measured requests (it sat out the rest)"
        if c.get("lookup_cycles"):
            line += (f"; {c['lookup_cycles']} of the cycles verified a prompt-lookup proposal and accepted "
                     f"{c['lookup_tokens_accepted'] / c['lookup_cycles']:.2f} of its tokens on average")
    print(line + "\n")

ablation = [("ablation-eagle", "eagle"), ("ablation-hass", "hass"), ("ablation-hass-csra", "hass + csra (full head)"),
            ("ablation-coral", "coral (hass + csra + router)"), ("coral-router-off", "coral, router off"),
            ("coral-fixed-depth", "coral, fixed depth 5"), ("coral-t1-router-off", "coral, router off, T=1 (auto tree)")]
first = next((load(n) for n, _ in ablation if load(n)), None)
if first:
    print(f"### Drafter ablation (T=0 unless noted; {first['tree']['total_tokens']} nodes; same data, steps and seed; cycles only)\n")
    print("| drafter | τ | plain tok/s | speculative tok/s | speedup | draft share | greedy identical | draft step ms | cycles accepting ≥ j, j = 1..5 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, label in ablation:
        b = load(name)
        if b:
            print(row(label, b["overall"], f" {step_ms(b):.2f} | {reach(b)} |"))
    print()

def size_table(prefix, title, first, key, label):
    """A table of the runs named prefix-*.json, one row per shape, with the verify cost measured at its size."""
    runs = [load(f[:-5]) for f in os.listdir(d) if f.startswith(prefix) and f.endswith(".json")]
    if not runs:
        return
    print(f"### {title}\n")
    print(f"| {first} | τ | plain tok/s | speculative tok/s | speedup | draft share | greedy identical | verify ms at this size |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for b in sorted(runs, key=key):
        v = b["verify_ms_by_tree_size"].get(str(b["tree"]["total_tokens"]))
        print(row(label(b), b["overall"], f" {v:.1f} |" if v is not None else " – |"))
    print()


size_table("sweep-", "Tree-size sweep (coral drafter with router, T=0, adaptive depth, cycles only)", "nodes",
           lambda b: b["tree"]["total_tokens"], lambda b: str(b["tree"]["total_tokens"]))
size_table("chain-", "Top-1 chains (coral drafter with router, T=0, adaptive depth, cycles only)", "depth (nodes)",
           lambda b: b["tree"]["depth"], lambda b: f"{b['tree']['depth']} ({b['tree']['total_tokens']})")

p = os.path.join(d, "llama-cpp.md")
if os.path.exists(p):
    print("### Plain decoding against llama.cpp (same weights, GGUF exported by `coral export-gguf`)\n")
    print(open(p).read())
