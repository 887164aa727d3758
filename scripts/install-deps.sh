#!/usr/bin/env bash
# Installs what building and testing megacache needs on a Debian machine: the C/C++
# libraries and tools from Debian's packages, and torch (CPU) plus the Python build tools
# from PyPI. Safe to run again: it only installs what is missing.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libssl-dev libdeflate-dev libzstd-dev libxxhash-dev libsodium-dev libhiredis-dev redis-server
  libgtest-dev libgmock-dev nlohmann-json3-dev libcli11-dev
  clang libclang-rt-14-dev
)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# torch==2.13.0 resolves to the CPU build on these machines; never ask for a bare "torch",
# which would pull a CUDA build of several GB.
if ! "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.__version__.startswith("2.13.0") else 1)' 2>/dev/null; then
  echo "install-deps: pip install torch==2.13.0"
  "$PYTHON" -m pip install -q torch==2.13.0
fi
"$PYTHON" -m pip install -q "nanobind>=2.0" "scikit-build-core>=0.10" cmake ninja
# The checkers `make lint`, `make tidy` and `make typecheck` run, pinned: other versions judge
# differently.
"$PYTHON" -m pip install -q clang-format==22.1.8 clang-tidy==22.1.8 ruff==0.17.6 mypy==1.20.2
# The Python suites run in venvs of their own, one per torch of the test matrix
# (scripts/test-matrix.sh, tests/matrix).
