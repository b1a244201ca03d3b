#!/usr/bin/env bash
# Issue #8, step 1 (run here, on a machine with .NET): the `coral` CLI published self-contained for linux-x64 WITHOUT
# libtorch (CoralTorchBackend=external), packed as artifacts/gpu/coral-linux-x64.tar.xz (ignored by git, carried to the
# device). On the device eng/gpu/run.sh points TorchSharp at the PyTorch installation's libtorch.
# What travels to the device is every tracked file (the demo weights alone are ~50 MB) plus this archive, 64 MiB in all:
# the framework is trimmed (TrimMode=partial: only the framework's own trimmable assemblies; TorchSharp and ours stay
# whole), and the plotting natives (SkiaSharp, HarfBuzz) and the runtime's debugger/alternative-GC libraries are left out.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
out="$root/artifacts/gpu"
rm -rf "$out/publish" && mkdir -p "$out"
dotnet publish "$root/src/Coral.Cli" -c Release -r linux-x64 --self-contained -p:CoralTorchBackend=external \
  -p:InvariantGlobalization=true -p:UseSystemResourceKeys=true -p:DebugType=none \
  -p:PublishTrimmed=true -p:TrimMode=partial -p:SuppressTrimAnalysisWarnings=true -p:TreatWarningsAsErrors=false \
  -o "$out/publish" -v q -nologo
if ls "$out/publish" | grep -E '^libtorch|^libc10' >/dev/null; then
  echo "publish output contains libtorch; it must come from the device's PyTorch" >&2; exit 1
fi
(cd "$out/publish" && rm -f libSkiaSharp.so libHarfBuzzSharp.so libmscordaccore.so libmscordbi.so libclrgc.so \
  libclrgcexp.so libcoreclrtraceptprovider.so createdump)
tar -C "$out/publish" -cf - . | xz -9e -T2 > "$out/coral-linux-x64.tar.xz"
du -sh "$out/publish" "$out/coral-linux-x64.tar.xz"
bash "$root/eng/gpu/travels.sh" "$out/coral-linux-x64.tar.xz" "trim more"
