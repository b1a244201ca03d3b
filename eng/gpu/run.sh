#!/usr/bin/env bash
# Issue #8, step 2 (run on the lent GPU machine from the repository root; it has PyTorch and no .NET):
#   run tool: command "bash eng/gpu/run.sh", carry ["artifacts/gpu/coral-linux-x64.tar.xz"], timeout ~500 s.
# Unpacks the CLI published by eng/gpu/publish.sh, points TorchSharp 0.107 (built for libtorch 2.10) at the installed
# PyTorch's libtorch, lists the shim's symbols that libtorch lacks, then runs the demo pair on CUDA. Everything it
# prints also goes to $OUT (the files that come back).
set -uo pipefail
root="$(pwd)"
out="${OUT:-$root/artifacts/gpu/out}"
app=/tmp/coral-app
mkdir -p "$out" && rm -rf "$app" && mkdir -p "$app"
tar -C "$app" -xJf "$root/artifacts/gpu/coral-linux-x64.tar.xz"
step() { echo; echo "== $*" | tee -a "$out/steps.txt"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$out/env.txt"
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 | tee -a "$out/env.txt"
torchlib="$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')"
export LD_LIBRARY_PATH="$torchlib:${LD_LIBRARY_PATH:-}"
ls "$torchlib" | tee "$out/torch-lib.txt" | grep -E '^lib(torch|c10)' | head -20

step "symbols of libLibTorchSharp.so (built for libtorch 2.10) that this libtorch does not define"
ldd -r "$app/libLibTorchSharp.so" > "$out/ldd.txt" 2>&1
grep -E 'not found' "$out/ldd.txt" | tee "$out/missing-libraries.txt"
grep -E 'undefined symbol' "$out/ldd.txt" | sed -E 's/^undefined symbol: ([^ \t]+).*/\1/' | c++filt > "$out/unresolved.txt"
echo "$(wc -l < "$out/unresolved.txt") unresolved symbols (first 30):"; head -30 "$out/unresolved.txt"

step "CPU smoke test against this libtorch"
timeout 90 "$app/coral" generate --device cpu --chat --temperature 0 --prompt "What is a dictionary?" --max-new-tokens 16 2>&1 | tee "$out/generate-cpu.txt"

step "CUDA: the demo pair, plain and speculative"
timeout 120 "$app/coral" generate --device cuda --chat --temperature 0 --prompt "What is a dictionary?" --max-new-tokens 32 2>&1 | tee "$out/generate-cuda.txt"
timeout 180 "$app/coral" bench --device cuda --prompts "$root/eng/demo/bench-prompts.jsonl" --max-new-tokens 64 --rounds 1 --json \
  > "$out/bench-cuda.json" 2> "$out/bench-cuda.err"
echo "bench exit $?"; tail -5 "$out/bench-cuda.err"

step "CUDA: the demo pair, the CORAL drafter alone (no prompt lookup, no plain fallback)"
timeout 120 "$app/coral" bench --device cuda --prompts "$root/eng/demo/bench-prompts.jsonl" --max-new-tokens 64 --rounds 1 --json \
  --prompt-lookup 0 --no-plain-fallback > "$out/bench-cuda-drafter.json" 2> "$out/bench-cuda-drafter.err"
echo "bench exit $?"; tail -3 "$out/bench-cuda-drafter.err"
if ! grep -q 'tokens/s' "$out/generate-cuda.txt"; then
  step "CUDA failed: which libraries the loader looked for (LD_DEBUG=libs)"
  LD_DEBUG=libs timeout 60 "$app/coral" generate --device cuda --prompt hi --max-new-tokens 2 > /dev/null 2> "$out/ld-debug.txt"
  grep -E 'torch_cuda|cudart|cublas|cudnn|nvrtc|error|cannot|not found' "$out/ld-debug.txt" | sort -u | head -60
fi
