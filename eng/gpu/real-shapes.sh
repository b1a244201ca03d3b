#!/usr/bin/env bash
# Issue #8, step 2a (on the lent GPU machine, after eng/gpu/run.sh in the same session, or alone; PyTorch and
# transformers, no .NET): the engine's costs at a real model's shape on CUDA.
#   run tool: command "bash eng/gpu/real-shapes.sh", carry ["artifacts/gpu/coral-linux-x64.tar.xz"], timeout ~540 s.
# Writes a random checkpoint with Llama-3-8B's dimensions (d 4,096, FFN 14,336, 32/8 heads, vocabulary 128,256, untied;
# LAYERS of its 32 layers: 16 GB of bf16 at 32) with transformers' save_pretrained, a random bf16 drafter for it with a
# 16-group router (coral draft-init), then `coral bench --device cuda` with the tuner's candidates (depth 5, top-k 8):
# plain step, verification cost by tree size (3 … 64 nodes), draft step through the full head and routed, and the
# tuned tree's cycle parts in the loop. Random weights say nothing about acceptance: the costs are what this measures.
# Results in $OUT/real-shapes/. Checked here on CPU (the coral half, on a 1B-shaped checkpoint of symbolic links).
#   env: LAYERS (32; 16 if the session's device time is short), KV_CACHE (f32 or bf16: the target's KV cache; default f32)
set -uo pipefail
root="$(pwd)"
out="${OUT:-$root/artifacts/gpu/out}/real-shapes"
app=/tmp/coral-app
model=/tmp/coral-llama3-8b-shape
mkdir -p "$out"
if [ ! -x "$app/coral" ]; then
  rm -rf "$app" && mkdir -p "$app" && tar -C "$app" -xJf "$root/artifacts/gpu/coral-linux-x64.tar.xz"
fi
export LD_LIBRARY_PATH="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))'):${LD_LIBRARY_PATH:-}"

echo "== writing the random checkpoint (${LAYERS:-32} layers)" | tee "$out/steps.txt"
rm -rf "$model"
python3 - "$model" "${LAYERS:-32}" <<'PY' 2>&1 | tee -a "$out/steps.txt"
import sys, time, torch
from transformers import LlamaConfig, LlamaForCausalLM
path, layers = sys.argv[1], int(sys.argv[2])
cfg = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers,
                  num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=50258, eos_token_id=50258)
start = time.time()
torch.manual_seed(0)
with torch.device("cuda"):
    model = LlamaForCausalLM(cfg)
model = model.to(torch.bfloat16)
model.save_pretrained(path, max_shard_size="4GB", safe_serialization=True)
print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters written in {time.time() - start:.0f} s")
PY
# The demo's tokenizer (GPT-2 ranks + ChatML, with its chat template): token ids below 50,259, the rest is padding.
cp "$root/samples/models/coral-demo-chat/tokenizer.json" "$root/samples/models/coral-demo-chat/tokenizer_config.json" "$model/"
ls -l "$model" | tee -a "$out/steps.txt"

echo "== a random bf16 drafter with a 16-group router" | tee -a "$out/steps.txt"
"$app/coral" draft-init --target "$model" --out "$model-draft" --bf16 --router-groups 16 --router-topk 2 2>&1 | tee -a "$out/steps.txt"

echo "== coral bench on CUDA: two prompts, 16 tokens, the tuned tree every step (costs, not τ)" | tee -a "$out/steps.txt"
printf '%s\n' '{"kind":"writing","prompt":"Continue this text: The history of the city begins with a small settlement on the banks of the river."}' \
  '{"kind":"faq","prompt":"How do I open a file for reading in Perl?"}' > /tmp/coral-real-shape-prompts.jsonl
timeout "${BENCH_TIMEOUT:-420}" "$app/coral" bench --device cuda --model "$model" --draft "$model-draft" --prompts /tmp/coral-real-shape-prompts.jsonl \
  --fixed-depth --no-plain-fallback --prompt-lookup 0 --max-new-tokens 16 --rounds 1 --warmup 1 --json ${KV_CACHE:+--kv-cache "$KV_CACHE"} \
  > "$out/bench.json" 2> "$out/bench.err"
echo "bench exit $?" | tee -a "$out/steps.txt"
tail -5 "$out/bench.err"
python3 - "$out/bench.json" <<'PY' 2>&1 | tee -a "$out/steps.txt"
import json, sys
r = json.load(open(sys.argv[1]))
o = r["overall"]
print("plain step ms", o.get("plain_step_ms"), "| cycle ms", o.get("cycle_ms"))
print("verify ms by tree size", r.get("verify_ms_by_tree_size"))
print("draft step ms", r.get("draft_step_ms"))
PY

[ -n "${SKIP_EAGER:-}" ] && exit 0
echo "== the same checkpoint in eager PyTorch (transformers, sdpa): a forward of T new tokens after 128 cached" | tee -a "$out/steps.txt"
timeout 150 python3 - "$model" "$out/eager.json" <<'PY' 2>&1 | grep -v Warning | tee -a "$out/steps.txt"
import json, statistics, sys, time, torch
from transformers import AutoModelForCausalLM, DynamicCache
path, dest = sys.argv[1], sys.argv[2]
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, device_map="cuda").eval()
context, sizes, times = 128, [1, 3, 4, 5, 8, 12, 16, 24, 32, 48, 64], {}
with torch.inference_mode():
    cache = DynamicCache()
    model(torch.arange(context, device="cuda").unsqueeze(0), past_key_values=cache, use_cache=True)
    for sweep in range(9):                      # interleaved; sweep 0 warms up
        for t in sizes:
            ids = torch.arange(1000, 1000 + t, device="cuda").unsqueeze(0)
            torch.cuda.synchronize(); start = time.perf_counter()
            logits = model(ids, past_key_values=cache, use_cache=True).logits.float().cpu()
            elapsed = (time.perf_counter() - start) * 1000
            cache.crop(-t)
            if sweep > 0:
                times.setdefault(t, []).append(elapsed)
result = {str(t): round(statistics.median(v), 3) for t, v in times.items()}
json.dump({"context": context, "forward_ms_by_tokens": result}, open(dest, "w"))
print("eager forward ms by new tokens", result)
PY
