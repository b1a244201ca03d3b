#!/usr/bin/env bash
# Issue #6 on a GPU session, step 1 (here, with .NET): the demo target's training data for eng/gpu/train-target.py.
# Builds the corpus (eng/corpus/build.sh), then `coral pretrain --export-blocks` tokenizes, renders and packs it
# exactly as `coral pretrain` would (blocks of 256 + 1 tokens, loss masks, the same shuffles) with the demo shape
# (eng/demo/target-config.json) and the GPT-2 + ChatML tokenizer, and packs the result for the run tool's carry
# (64 MiB at most): artifacts/gpu/target-data.tar.xz.
#   env: CORPUS (default ~/.cache/coral/corpus)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
corpus="${CORPUS:-$HOME/.cache/coral/corpus}"
work="$root/artifacts/gpu/target-data"
"$root/eng/corpus/build.sh" "$corpus"
dotnet build "$root/src/Coral.Cli" -c Release -v q -nologo >/dev/null
rm -rf "$work" && mkdir -p "$work"
"$root/src/Coral.Cli/bin/Release/net10.0/coral" pretrain --tokenizer gpt2 --config "$root/eng/demo/target-config.json" \
  --data "$corpus/out/pretrain.jsonl" --sft "$corpus/out/chat-train.jsonl" --max-length 256 --seed 1 --export-blocks "$work"
tar -C "$root/artifacts/gpu" -cf - target-data | xz -9e -T2 > "$root/artifacts/gpu/target-data.tar.xz"
ls -l "$root/artifacts/gpu/target-data.tar.xz"
bash "$root/eng/gpu/travels.sh" "$root/artifacts/gpu/target-data.tar.xz" "export fewer blocks (a smaller corpus)"
