#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium and its matching chromedriver (tests/browser.py drives them).
# Idempotent: exits 0 silently when both /usr/bin/chromium and /usr/bin/chromedriver are already there.
# Needs root and Debian's archive (apt); nothing else on the network.
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "install_browser.sh: chromium/chromedriver missing; run as root (apt-get install chromium chromium-driver)" >&2
    exit 1
fi

apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
