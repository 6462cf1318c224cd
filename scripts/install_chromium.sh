#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium, used by tests/evaluation to render the
# offline HTML report and check its screenshot. Idempotent: does nothing when present.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
