#!/usr/bin/env bash
# Issue #8 in one device call (run on the lent GPU machine from the repository root; it has PyTorch and no .NET):
#   run tool: command "bash eng/gpu/session.sh", carry ["artifacts/gpu/coral-linux-x64.tar.xz"], timeout_s 560.
# eng/gpu/run.sh (libtorch symbols, CPU smoke test, the demo pair on CUDA: generate and bench), then — only if CUDA
# generated — eng/gpu/real-shapes.sh at LAYERS (16) of Llama-3-8B's 32 layers. The run tool returns at most 8 files, so
# every output is packed into $OUT/gpu-out.tar.gz after each part (with a copy of the log as $OUT/session.log).
#   env: LAYERS (16), DEADLINE_S (500: real-shapes is skipped when less than 240 s of it remain)
set -uo pipefail
root="$(pwd)"
final="${OUT:-$root/artifacts/gpu/out}"
work=/tmp/coral-gpu-out
rm -rf "$work" && mkdir -p "$work" "$final"
export OUT="$work" PYTHONUNBUFFERED=1
start=$SECONDS
pack() { cp "$work/session.log" "$final/session.log" 2>/dev/null; tar -C "$work" -czf "$final/gpu-out.tar.gz" . ; }

{
  echo "== eng/gpu/run.sh"
  bash "$root/eng/gpu/run.sh"
  echo "run.sh took $((SECONDS - start)) s"
} 2>&1 | tee "$work/session.log"
pack

left=$(( ${DEADLINE_S:-500} - (SECONDS - start) ))
if ! grep -q 'tokens/s' "$work/generate-cuda.txt" 2>/dev/null; then
  echo "CUDA did not generate: real-shapes skipped" | tee -a "$work/session.log"
elif [ "$left" -lt 240 ]; then
  echo "only $left s left: real-shapes skipped" | tee -a "$work/session.log"
else
  {
    echo "== eng/gpu/real-shapes.sh (LAYERS=${LAYERS:-16}, $left s left)"
    LAYERS="${LAYERS:-16}" BENCH_TIMEOUT=$(( left > 440 ? 240 : left - 200 )) bash "$root/eng/gpu/real-shapes.sh"
    echo "session took $((SECONDS - start)) s"
  } 2>&1 | tee -a "$work/session.log"
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$work/session.log" 2>&1
pack
ls -l "$final"
