#!/usr/bin/env bash
# The base install's cost on this machine, as `make demo` does it: for each EXTRA given (default: none, then the
# `tf` extra), a throwaway venv in a temporary folder, `pip install -c constraints.txt -e .[EXTRA]` timed, then the
# venv's size and its package count; the venv is deleted after. Packages come from wherever pip is set up to look
# (this machine: its local package index first), so the time is install, not download.
#   scripts/measure_install.sh            # '' and tf
#   scripts/measure_install.sh '' tf test
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
extras=("$@")
[ ${#extras[@]} -gt 0 ] || extras=('' tf)
for extra in "${extras[@]}"; do
  venv=$(mktemp -d /tmp/measure_install.XXXXXX)
  trap 'rm -rf "$venv"' EXIT
  "$PYTHON" -m venv "$venv"
  target=.${extra:+[$extra]}
  load=$(cut -d' ' -f1 /proc/loadavg)
  start=$(date +%s%N)
  "$venv/bin/pip" install -q --disable-pip-version-check -c constraints.txt -e "$target" >"$venv/install.log" 2>&1 || {
    tail -5 "$venv/install.log" >&2
    exit 1
  }
  end=$(date +%s%N)
  packages=$("$venv/bin/pip" list --disable-pip-version-check 2>/dev/null | tail -n +3 | wc -l)
  tenths=$(((end - start) / 100000000))
  printf "pip install -e '%s': %d.%d s, venv %s MB, %s packages (load %s before)\n" "$target" \
    $((tenths / 10)) $((tenths % 10)) "$(du -sm "$venv" | cut -f1)" "$packages" "$load"
  rm -rf "$venv"
  trap - EXIT
done
