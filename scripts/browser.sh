#!/usr/bin/env bash
# Browser tests of the dashboard and ringcast.js: a real headless Chromium (Debian's
# chromium package, never a downloaded browser) driven by playwright-core, against the
# release gateway binary. Idempotent: installs chromium + chromium-driver only when
# missing, and the npm dev dependencies with `npm ci` only when the lock file changed.
# Prints TAP; scripts/test.sh counts its "# pass N" / "# fail N" lines.
set -euo pipefail
cd "$(dirname "$0")/.."
# A setup step that fails counts as a failed test, so the closing line cannot hide it.
setup_failed() { echo "browser: $1" >&2; echo "# fail 1"; exit 1; }

if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  echo "browser: installing chromium and chromium-driver (Debian packages)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } ||
    setup_failed "cannot install chromium from Debian packages"
fi

cd clients/js
stamp=node_modules/.package-lock.json
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp.source" 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error || setup_failed "npm ci failed in clients/js"
  cp package-lock.json "$stamp.source"
fi

root="$(cd ../.. && pwd)"
export RINGCAST_BIN="${RINGCAST_BIN:-$root/target/release/ringcast}"
export RINGCAST_ARTIFACTS="${RINGCAST_ARTIFACTS:-$root/target/artifacts}"
[ -x "$RINGCAST_BIN" ] || setup_failed "$RINGCAST_BIN is missing; build it first (cargo build --release)"
npm test --silent
echo "browser: screenshot in ${RINGCAST_ARTIFACTS}/dashboard.png"
