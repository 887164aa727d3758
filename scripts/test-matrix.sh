#!/usr/bin/env bash
# Runs pytest with the given arguments on every torch of the test matrix, each in a venv of
# its own with tests/matrix/torch-<version>.txt and the megacache wheel installed, all
# versions at once, each into build/test-matrix/torch-<version>.log (printed at the end).
# Every version runs; the exit status is 1 if any failed.
#
#   scripts/test-matrix.sh <megacache wheel> [pytest arguments...]
#
# TORCH_MATRIX="2.13.0 2.15.0" picks versions (default: every file in tests/matrix).
# The venvs live in $MEGACACHE_VENVS (default ~/.cache/megacache/venvs) and are kept between
# runs, so a machine downloads each torch once. A venv whose requirements file changed, or
# whose install was cut short, is made again.
set -euo pipefail

wheel="$(realpath "$1")"
shift
root="$(cd "$(dirname "$0")/.." && pwd)"
venvs="${MEGACACHE_VENVS:-$HOME/.cache/megacache/venvs}"
# The interpreter that built the wheel: the venvs share it, so the extension's ABI fits.
PYTHON="${PYTHON:-python3}"
# The requirements pin torch exactly; a machine's pip constraints (a cap below the newest
# torch on some machines) must not overrule them.
export PIP_CONSTRAINT=/dev/null

venv_for() {
  local version="$1" requirements="$root/tests/matrix/torch-$1.txt"
  local venv="$venvs/torch-$version"
  if ! cmp -s "$requirements" "$venv/.megacache-requirements"; then
    echo "test-matrix: installing $requirements into $venv" >&2
    rm -rf "$venv"
    mkdir -p "$venvs"
    "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q -r "$requirements" >&2
    cp "$requirements" "$venv/.megacache-requirements"  # last: a cut-short install is redone
  fi
  "$venv/bin/python" -m pip install -q --no-deps --force-reinstall "$wheel" >&2
  echo "$venv"
}

versions="${TORCH_MATRIX:-$(cd "$root/tests/matrix" && ls torch-*.txt | sed 's/^torch-//; s/\.txt$//')}"
logs="$root/build/test-matrix"
mkdir -p "$logs"
# Every venv first, then pytest on every version at once: most of a run is one test process
# waiting on one compile, so two versions side by side keep both cores busy.
declare -A venv_of pid_of
for version in $versions; do
  venv_of[$version]="$(venv_for "$version")"
done
for version in $versions; do
  venv="${venv_of[$version]}"
  # The venv's own megacache CLI first on PATH: the tests run it as users do. Each version
  # has its own --basetemp: pytest's shared /tmp/pytest-of-$USER keeps only the three newest
  # runs, so a run started beside them (another version, a developer's pytest) deleted the
  # directories of a run still in progress.
  PATH="$venv/bin:$PATH" "$venv/bin/python" -m pytest --basetemp="$logs/tmp-$version" "$@" \
    > "$logs/torch-$version.log" 2>&1 &
  pid_of[$version]=$!
done
failed=""
for version in $versions; do
  wait "${pid_of[$version]}" || failed="$failed $version"
  echo "== torch $version ($logs/torch-$version.log)"
  cat "$logs/torch-$version.log"
done
if [ -n "$failed" ]; then
  echo "test-matrix: pytest failed on torch$failed" >&2
  exit 1
fi
