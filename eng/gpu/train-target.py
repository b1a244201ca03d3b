#!/usr/bin/env python3
"""Trains the demo target (issue #6) on a GPU machine that has PyTorch and transformers but no .NET.

The data comes from this repository's own pipeline: `coral pretrain --export-blocks DIR` (eng/gpu/prepare-target.sh)
tokenizes, renders the chats with the model's ChatML template, masks the loss to assistant tokens, shuffles and packs
exactly as the C# trainer does, and writes DIR/pretrain-blocks.safetensors and DIR/sft-blocks.safetensors (ids I32,
mask U8, [blocks, L + 1]) with DIR/model/ (config.json, tokenizer files; no weights). This script builds
transformers' LlamaForCausalLM from that config, pretrains, then fine-tunes on the chats, each phase on a wall-clock
budget that its learning-rate schedule follows (warm-up, then cosine to 10%), and saves with save_pretrained in
safetensors shards of at most 15 MB where tensors allow (the embedding alone is 25.7 MB in bf16: eng/gpu/train-target.sh
splits files over 15 MB for the way back, since the device returns files of at most 16 MB), bf16, with the tokenizer
files beside.
Coral then loads it as any Hugging Face checkpoint.

  python3 eng/gpu/train-target.py --blocks DIR --out OUT [--pretrain-minutes 5] [--sft-minutes 2]
"""
import argparse
import json
import math
import os
import shutil
import struct
import time

import torch
import torch.nn.functional as F

DTYPES = {"I32": torch.int32, "U8": torch.uint8}


def read_blocks(path):
    """The ids and loss mask of a block file written by `coral pretrain --export-blocks` (plain safetensors)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        payload = f.read()
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        flat = torch.frombuffer(bytearray(payload[start:end]), dtype=DTYPES[entry["dtype"]])
        tensors[name] = flat.reshape(entry["shape"])
    ids, mask = tensors["ids"].long(), tensors["mask"]
    if ids.shape != mask.shape or ids.dim() != 2:
        raise ValueError(f"{path}: ids {tuple(ids.shape)} and mask {tuple(mask.shape)} must be the same [blocks, L + 1]")
    return ids, mask


def lr_at(progress, peak, warmup=0.03):
    """Warm-up over the first 3% of the phase, then cosine from the peak to 10% of it."""
    if progress < warmup:
        return peak * (progress + 1e-3) / warmup
    t = min(1.0, (progress - warmup) / (1 - warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def train(model, ids, mask, phase, minutes, lr, batch, device, log):
    """One phase on a time budget: batches of consecutive shuffled blocks, loss on tokens whose mask is 1."""
    ids, mask = ids.to(device), mask.to(device)
    blocks, length = ids.shape[0], ids.shape[1] - 1
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    other = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    budget = minutes * 60.0
    start, step, seen, tokens = time.time(), 0, 0, 0
    model.train()
    while True:
        elapsed = time.time() - start
        if elapsed >= budget:
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(elapsed / budget, lr)
        index = (torch.arange(batch, device=device) + seen) % blocks
        seen += batch
        x, m = ids[index], mask[index]
        labels = torch.where(m[:, 1:] == 1, x[:, 1:], torch.full_like(x[:, 1:], -100))
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        tokens += batch * length
        if step % 100 == 0:
            rate = tokens / max(time.time() - start, 1e-9)
            log(f"[{phase}] step {step} loss {loss.item():.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"{rate:,.0f} tok/s epoch {seen / blocks:.2f} {time.time() - start:.0f} s")
        step += 1
    log(f"[{phase}] done: {step} steps, {tokens:,} tokens ({seen / blocks:.2f} epochs) in {time.time() - start:.0f} s, "
        f"last loss {loss.item():.4f}")


@torch.no_grad()
def samples(model, tokenizer_file, prompts, device, log, new_tokens=48):
    """Greedy answers to a few prompts in the model's ChatML format (a look at quality before the files come back)."""
    from transformers import PreTrainedTokenizerFast
    tok = PreTrainedTokenizerFast(tokenizer_file=tokenizer_file)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    model.eval()
    for q in prompts:
        ids = tok(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt").input_ids.to(device)
        out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, eos_token_id=end, pad_token_id=end)
        log(f"> {q}\n{tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", required=True, help="the folder written by coral pretrain --export-blocks")
    ap.add_argument("--out", required=True)
    ap.add_argument("--pretrain-minutes", type=float, default=5.0)
    ap.add_argument("--sft-minutes", type=float, default=2.0)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--sft-lr", type=float, default=5e-4)
    ap.add_argument("--batch", type=int, default=64, help="blocks per step")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--shard", default="15MB", help="save_pretrained's max_shard_size (the device returns files <= 16 MB)")
    args = ap.parse_args()

    from transformers import LlamaConfig, LlamaForCausalLM

    os.makedirs(args.out, exist_ok=True)
    log_file = open(os.path.join(args.out, "train-log.txt"), "a", encoding="utf-8")

    def log(line):
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    model_dir = os.path.join(args.blocks, "model")
    config = LlamaConfig.from_pretrained(model_dir)
    model = LlamaForCausalLM(config).to(device=device, dtype=torch.float32)   # f32 master weights; bf16 autocast
    params = sum(p.numel() for p in model.parameters())
    log(f"torch {torch.__version__}, device {device} "
        f"({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}), {params / 1e6:.2f}M parameters, config {config.to_dict()}")

    for phase, minutes, lr in [("pretrain", args.pretrain_minutes, args.lr), ("sft", args.sft_minutes, args.sft_lr)]:
        path = os.path.join(args.blocks, f"{phase}-blocks.safetensors")
        if minutes <= 0 or not os.path.exists(path):
            log(f"[{phase}] skipped ({'no ' + path if minutes > 0 else 'no minutes'})")
            continue
        ids, mask = read_blocks(path)
        log(f"[{phase}] {ids.shape[0]} blocks of {ids.shape[1] - 1} tokens, {int(mask[:, 1:].sum()):,} loss tokens")
        train(model, ids, mask, phase, minutes, lr, args.batch, device, log)

    model = model.to(torch.bfloat16)
    model.config.torch_dtype = "bfloat16"
    try:
        model.save_pretrained(args.out, max_shard_size=args.shard, safe_serialization=True)
    except TypeError:   # transformers versions that always write safetensors and dropped the argument
        model.save_pretrained(args.out, max_shard_size=args.shard)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        src = os.path.join(model_dir, name)
        if os.path.exists(src):
            shutil.copy(src, os.path.join(args.out, name))
    sizes = {f: os.path.getsize(os.path.join(args.out, f)) for f in sorted(os.listdir(args.out))}
    log("wrote " + ", ".join(f"{f} ({s / 1e6:.1f} MB)" for f, s in sizes.items()))
    samples(model, os.path.join(model_dir, "tokenizer.json"), [
        'What does "harbor" mean?', "Define kludge.", "How do I sort a list in Python?",
        "Tell me a saying about work.", "Continue this text: The ship left the harbor at dawn. The crew was tired.",
    ], device, log)


if __name__ == "__main__":
    main()
