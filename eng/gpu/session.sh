#!/usr/bin/env bash
# Issue #8 in one device call (run on the lent GPU machine from the repository root; it has PyTorch and no .NET):
#   run tool: command "bash eng/gpu/session.sh [PART ...]", carry ["artifacts/gpu/coral-linux-x64.tar.xz"], timeout_s 560.
# PARTs, in the order given (default: run real-shapes):
#   run          eng/gpu/run.sh: libtorch symbols, CPU smoke test, the demo pair on CUDA (generate, bench, drafter alone)
#   real-shapes  eng/gpu/real-shapes.sh at LAYERS (16) of Llama-3-8B's 32 layers — skipped if CUDA did not generate in
#                `run`, or when less than 240 s of DEADLINE_S (500) remain
#   sdpa-probe   eng/gpu/sdpa-probe.py: SDPA's cost with no / bool / additive mask at an 8B layer's shape
# The run tool returns at most 8 files, so every output is packed into $OUT/gpu-out.tar.gz after each part (with a copy
# of the log as $OUT/session.log).
set -uo pipefail
root="$(pwd)"
final="${OUT:-$root/artifacts/gpu/out}"
work=/tmp/coral-gpu-out
rm -rf "$work" && mkdir -p "$work" "$final"
export OUT="$work" PYTHONUNBUFFERED=1
start=$SECONDS
pack() { cp "$work/session.log" "$final/session.log" 2>/dev/null; tar -C "$work" -czf "$final/gpu-out.tar.gz" . ; }

parts=("$@"); [ ${#parts[@]} -gt 0 ] || parts=(run real-shapes)
for part in "${parts[@]}"; do
  left=$(( ${DEADLINE_S:-500} - (SECONDS - start) ))
  case "$part" in
    run)
      { echo "== eng/gpu/run.sh"; bash "$root/eng/gpu/run.sh"; echo "run.sh took $((SECONDS - start)) s"; } 2>&1 | tee -a "$work/session.log" ;;
    real-shapes)
      if [ -f "$work/generate-cuda.txt" ] && ! grep -q 'tokens/s' "$work/generate-cuda.txt"; then
        echo "CUDA did not generate: real-shapes skipped" | tee -a "$work/session.log"
      elif [ "$left" -lt 240 ]; then
        echo "only $left s left: real-shapes skipped" | tee -a "$work/session.log"
      else
        { echo "== eng/gpu/real-shapes.sh (LAYERS=${LAYERS:-16}, $left s left)"
          LAYERS="${LAYERS:-16}" BENCH_TIMEOUT=$(( left > 440 ? 240 : left - 200 )) bash "$root/eng/gpu/real-shapes.sh"; } 2>&1 | tee -a "$work/session.log"
      fi ;;
    sdpa-probe)
      { echo "== SDPA at an 8B layer's attention shape"; timeout 120 python3 "$root/eng/gpu/sdpa-probe.py"; } 2>&1 | tee -a "$work/session.log" ;;
    *) echo "unknown part: $part (run, real-shapes, sdpa-probe)" | tee -a "$work/session.log" ;;
  esac
  pack
done
echo "session took $((SECONDS - start)) s" | tee -a "$work/session.log"
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv >> "$work/session.log" 2>&1
pack
ls -l "$final"
