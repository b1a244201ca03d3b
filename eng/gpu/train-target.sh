#!/usr/bin/env bash
# Issue #6 on a GPU session, step 2 (on the lent GPU machine, from the repository root; PyTorch and transformers, no .NET):
#   run tool: command "bash eng/gpu/train-target.sh", carry ["artifacts/gpu/target-data.tar.xz"], timeout ~600 s.
# Trains the demo target with eng/gpu/train-target.py on the blocks from eng/gpu/prepare-target.sh and leaves the
# Hugging Face folder (bf16 safetensors shards < 16 MB, tokenizer files, train-log.txt with sample answers) in
# $OUT/coral-demo-chat. Back here: check it with `coral generate --model <that folder>`, then extract features, train the
# drafters and the router (STAGES="features drafters router ship" eng/demo/build.sh with the folder as WORK/target).
#   env: PRETRAIN_MINUTES (5), SFT_MINUTES (2)
set -euo pipefail
root="$(pwd)"
out="${OUT:-$root/artifacts/gpu/out}"
data=/tmp/coral-target-data
rm -rf "$data" && mkdir -p "$data" "$out"
tar -C "$data" -xJf "$root/artifacts/gpu/target-data.tar.xz"
nvidia-smi --query-gpu=name,memory.total --format=csv 2>&1 | tee "$out/gpu.txt" || true
python3 "$root/eng/gpu/train-target.py" --blocks "$data/target-data" --out "$out/coral-demo-chat" \
  --pretrain-minutes "${PRETRAIN_MINUTES:-5}" --sft-minutes "${SFT_MINUTES:-2}"
# The device returns files of at most 16 MB; a shard holding the 25.7 MB embedding goes back in parts. Here, join them:
#   for f in coral-demo-chat/*.part-00; do cat "${f%.part-00}".part-* > "${f%.part-00}" && rm "${f%.part-00}".part-*; done
find "$out/coral-demo-chat" -type f -size +15M | while read -r f; do
  split -b 15000000 -d "$f" "$f.part-" && rm "$f"
done
ls -l "$out/coral-demo-chat"
