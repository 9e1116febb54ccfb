#!/usr/bin/env bash
# Debian's headless Chromium for the console's end-to-end test (tests/e2e/test_console.py), driven
# by Playwright for Python with executable_path=/usr/bin/chromium: `playwright install` is never run.
# Idempotent: does nothing when chromium is already there. Needs root (CI runs as root) or sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
[[ "$(id -u)" == "0" ]] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
command -v chromium
