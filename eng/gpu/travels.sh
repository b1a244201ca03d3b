#!/usr/bin/env bash
# Whether a carried archive travels to the device: the run tool sends every tracked file (the demo weights alone are
# ~50 MB) plus the carried paths, 64 MiB in all. Usage: bash eng/gpu/travels.sh <archive> ["what to do if not"]
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tracked=$(cd "$root" && git ls-files -z | xargs -0 stat -c %s 2>/dev/null | awk '{ s += $1 } END { print s }')
total=$(( tracked + $(stat -c %s "$1") ))
echo "travels: $(( total / 1048576 )) MiB of 64 (tracked files $(( tracked / 1048576 )) MiB + $(basename "$1"))"
[ "$total" -le $(( 64 * 1048576 )) ] || { echo "over the run tool's 64 MiB: ${2:-carry less}" >&2; exit 1; }
