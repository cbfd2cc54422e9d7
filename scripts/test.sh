#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine, then run the whole suite.
# Debian packages: the real peers the tests use (sipp, tcpdump, tshark, redis-server, baresip), and
# gcc for the compiled modules (capture/_fastpath.c, capture/_spoolrender.c), which the suite checks
# against the Python paths they stand in for.
# Python: a virtual environment in .venv with the project and its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(sip-tester tcpdump tshark redis-server baresip gcc libc6-dev)
missing=()
for tool in sipp tcpdump tshark redis-server baresip gcc; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing Debian packages for: ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"
