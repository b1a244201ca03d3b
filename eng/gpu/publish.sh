#!/usr/bin/env bash
# Issue #8, step 1 (run here, on a machine with .NET): the `coral` CLI published self-contained for linux-x64 WITHOUT
# libtorch (CoralTorchBackend=external), packed as artifacts/gpu/coral-linux-x64.tar.xz (ignored by git, carried to the
# device). On the device eng/gpu/run.sh points TorchSharp at the PyTorch installation's libtorch.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/artifacts/gpu"
rm -rf "$out/publish" && mkdir -p "$out"
dotnet publish "$root/src/Coral.Cli" -c Release -r linux-x64 --self-contained -p:CoralTorchBackend=external \
  -p:InvariantGlobalization=true -p:DebugType=none -o "$out/publish" -v q -nologo
if ls "$out/publish" | grep -E '^libtorch|^libc10' >/dev/null; then
  echo "publish output contains libtorch; it must come from the device's PyTorch" >&2; exit 1
fi
tar -C "$out/publish" -cJf "$out/coral-linux-x64.tar.xz" .
du -sh "$out/publish" "$out/coral-linux-x64.tar.xz"
