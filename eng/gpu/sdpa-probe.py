"""Issue #8: one SDPA call at one Llama-3-8B layer's attention shape (q [1, 8, 4T, 128] against 128 + T cached slots), with no
mask, a bool mask and an additive mask, f32 and bf16: host time per call (launch-bound) and, from the profiler, the
backend that runs. Run on the GPU machine by eng/gpu/session.sh sdpa-probe; results in docs/gpu.md."""
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
