#!/usr/bin/env bash
# Applies the project style (pyproject.toml: ruff's fixable rules, then pyink) to every Python file under the
# given paths (default: the repository root). Run it from a clean checkout: it rewrites files in place.
# Rules ruff cannot fix are listed at the end; `make lint` fails until they are fixed by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
paths=("${@:-.}")
# ruff first: Q000 turns inline strings to single quotes, so pyink's majority-quote rule keeps them single;
# I001 sorts imports, UP rewrites typing. pyink then owns the layout; ruff again for anything pyink moved.
"$BIN/ruff" check --fix --silent --exit-zero "${paths[@]}"
"$BIN/pyink" --quiet "${paths[@]}"
"$BIN/ruff" check --fix --silent --exit-zero "${paths[@]}"
"$BIN/pyink" --quiet --check "${paths[@]}"
"$BIN/ruff" check --output-format concise "${paths[@]}" || {
  echo "format_all: the ruff findings above need a manual fix" >&2
  exit 1
}
