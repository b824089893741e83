#!/usr/bin/env bash
# Validates deploy/ offline (see deploy/check.py): Kubernetes schemas from the
# kubernetes-validate package, installed from PyPI into target/deploy-venv once.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/deploy-venv
setup_failed() { echo "deploy: $1" >&2; echo "# fail 1"; exit 1; }
if ! cmp -s deploy/requirements.txt "$venv/requirements.txt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv" || setup_failed "python3 -m venv failed (install python3-venv)"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r deploy/requirements.txt ||
    setup_failed "pip install -r deploy/requirements.txt failed"
  cp deploy/requirements.txt "$venv/requirements.txt"
fi
binary="${RINGCAST_BIN:-target/release/ringcast}"
[ -x "$binary" ] || setup_failed "$binary is missing; build it first (cargo build --release)"
"$venv/bin/python" deploy/check.py "$binary"
