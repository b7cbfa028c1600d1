#!/usr/bin/env bash
# Test the framework integrations against chosen framework versions, each in a throwaway venv.
#
# Usage: scripts/check_versions.sh SPEC...     e.g.
#   scripts/check_versions.sh transformers==4.57.0 transformers==5.25.0 lightning==2.4.0 lightning==2.6.6
#
# For each SPEC (transformers==X or lightning==X): a fresh venv in $IES_VENVS/<spec> (default
# /tmp/ies-versions), torch==2.13.0 installed FIRST (no dependency may pull another build), then a
# copy of this package with the matching extra plus the pinned framework (so pip also checks that the
# extra admits that version), then pytest. It runs that framework's tests in tests/integrations (and
# the examples that use it) against the installed copy, and prints the resolved versions with
# PASS/FAIL. Exit status: the number of failed specs. Logs: $IES_VENVS/<spec>.log.
# Each venv takes a few minutes; run it with `nice -n 10` in the background on a shared machine.
# IES_REUSE=1 keeps a venv made by an earlier call and only reinstalls this package into it.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENVS=${IES_VENVS:-/tmp/ies-versions}
PY=${PYTHON:-python3}
TORCH_SPEC=${IES_TORCH_SPEC:-torch==2.13.0}
mkdir -p "$VENVS"
failed=0
for spec in "$@"; do
  case "$spec" in
    transformers*) extra=huggingface; tests=(tests/integrations/test_huggingface.py tests/integrations/test_examples.py -k "not lightning") ;;
    lightning*) extra=lightning; tests=(tests/integrations/test_lightning.py tests/integrations/test_examples.py -k "not huggingface") ;;
    *) echo "check_versions: unknown spec '$spec' (transformers==X or lightning==X)" >&2; exit 2 ;;
  esac
  name=$(echo "$spec" | tr -c 'A-Za-z0-9.\n' '_')
  venv="$VENVS/$name" log="$VENVS/$name.log" src="$VENVS/$name-src"
  [ "${IES_REUSE:-0}" = 1 ] && [ -x "$venv/bin/python" ] && reuse=1 || reuse=0
  [ $reuse = 1 ] || rm -rf "$venv"
  rm -rf "$src"
  # A copy of the package as it is now (committed or not), so the build writes nothing into the checkout.
  mkdir -p "$src" && cp -r "$ROOT/pyproject.toml" "$ROOT/README.md" "$ROOT/src" "$src/"
  rm -rf "$src"/src/*.egg-info
  {
    if [ $reuse = 1 ]; then
      "$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$src"
    else
      "$PY" -m venv "$venv" &&
      "$venv/bin/python" -m pip install -q "$TORCH_SPEC" &&
      "$venv/bin/python" -m pip install -q "$src[$extra]" "$spec" "pytest>=7"
    fi &&
    cd "$ROOT" && OMP_NUM_THREADS=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider "${tests[@]}"
  } >"$log" 2>&1
  rc=$?
  versions=$("$venv/bin/python" -c "
import importlib.metadata as m
print(' '.join(f'{p} {m.version(p)}' for p in ('torch', 'transformers', 'accelerate', 'lightning') if __import__('importlib.util').util.find_spec(p)))" 2>/dev/null)
  summary=$(tail -n 1 "$log")
  if [ $rc -eq 0 ]; then echo "PASS $spec: $versions: $summary"; else echo "FAIL $spec: $versions: $summary (log: $log)"; failed=$((failed + 1)); fi
done
exit $failed
