#!/usr/bin/env bash
# Issue #8, step 2b (on the lent GPU machine, after real-shapes.sh showed a verify forward of 3 tokens costing 8 ms more
# than a one-token step at Llama-3-8B's shape, where eager PyTorch's costs the same):
#   run tool: command "bash eng/gpu/verify-probe.sh", carry ["artifacts/gpu/coral-linux-x64.tar.xz"], timeout_s 400.
# 1. PyTorch alone: one SDPA call at one 8B layer's attention shape (q [1, 8, 4T, 128] against 128 + T cached slots),
#    no mask / bool mask / additive mask, f32 and bf16: host time per call (launch-bound) and what backend runs.
# 2. real-shapes.sh again (LAYERS, default 32) with the build that builds the additive mask once per forward.
set -uo pipefail
root="$(pwd)"
final="${OUT:-$root/artifacts/gpu/out}"
work=/tmp/coral-gpu-out
rm -rf "$work" && mkdir -p "$work" "$final"
export OUT="$work" PYTHONUNBUFFERED=1
{
  echo "== SDPA at an 8B layer's attention shape"
  timeout 120 python3 - <<'PY'
import time, torch
import torch.nn.functional as F
dev = "cuda"
for dtype in (torch.float32, torch.bfloat16):
    for t in (1, 3, 16, 64):
        ctx = 128 + t
        q = torch.randn(1, 8, 4 * t, 128, device=dev, dtype=dtype)
        k = torch.randn(1, 8, ctx, 128, device=dev, dtype=dtype)
        v = torch.randn_like(k)
        bool_mask = torch.ones(t, ctx, dtype=torch.bool, device=dev).tril(128).repeat(4, 1)
        add_mask = torch.zeros(4 * t, ctx, dtype=dtype, device=dev).masked_fill_(bool_mask.logical_not(), float("-inf"))
        row = []
        for name, m in (("none", None), ("bool", bool_mask), ("additive", add_mask)):
            for _ in range(20):
                F.scaled_dot_product_attention(q, k, v, m)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(200):
                F.scaled_dot_product_attention(q, k, v, m)
            host = (time.perf_counter() - start) / 200 * 1e6
            torch.cuda.synchronize()
            total = (time.perf_counter() - start) / 200 * 1e6
            row.append(f"{name} {host:.0f}/{total:.0f} us")
        print(f"{str(dtype):15} T={t:3}: " + " | ".join(row) + "   (host/with sync)")
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
    for m in (None, bool_mask, add_mask):
        F.scaled_dot_product_attention(q, k, v, m); torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=14))
PY
  echo "== real-shapes.sh with the additive mask built once per forward"
  SKIP_EAGER=1 LAYERS="${LAYERS:-32}" BENCH_TIMEOUT=200 bash "$root/eng/gpu/real-shapes.sh"
} 2>&1 | tee "$work/session.log"
cp "$work/session.log" "$final/session.log"; tar -C "$work" -czf "$final/gpu-out.tar.gz" .
