#!/usr/bin/env bash
# The web viewer's pieces: NiiVue from npm (@niivue/niivue, BSD-2-Clause) into
# radfm/serve/static/niivue.umd.js, and Debian's chromium for its end-to-end test (tests/serve/test_viewer.py).
# Best effort and idempotent: without npm or apt the viewer test skips and says why.
set -u
cd "$(dirname "$0")/.."
NIIVUE_VERSION="0.69.0"
OUT="radfm/serve/static/niivue.umd.js"
STAMP="radfm/serve/static/.niivue-$NIIVUE_VERSION"
if [ ! -f "$OUT" ] || [ ! -f "$STAMP" ]; then
  if command -v npm >/dev/null 2>&1; then
    tmp="$(mktemp -d)"
    if (cd "$tmp" && npm pack -q "@niivue/niivue@$NIIVUE_VERSION" >/dev/null 2>&1) \
        && tar xzf "$tmp"/niivue-niivue-"$NIIVUE_VERSION".tgz -C "$tmp" package/dist/niivue.umd.js; then
      cp "$tmp/package/dist/niivue.umd.js" "$OUT.partial" && mv "$OUT.partial" "$OUT" && touch "$STAMP"
    else
      echo "setup_viewer: npm pack @niivue/niivue@$NIIVUE_VERSION failed; /viewer will answer 503" >&2
    fi
    rm -rf "$tmp"
  else
    echo "setup_viewer: npm not found; /viewer will answer 503 and the viewer test will skip" >&2
  fi
fi
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1; apt-get install -y -q --no-install-recommends chromium >/dev/null 2>&1; } \
      || echo "setup_viewer: apt-get install chromium failed; the viewer test will skip" >&2
  else
    echo "setup_viewer: not root or no apt-get; no chromium, the viewer test will skip" >&2
  fi
fi
exit 0
