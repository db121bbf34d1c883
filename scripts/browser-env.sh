#!/usr/bin/env bash
# Debian's Chromium for the tests that open graphpress's HTML reports in a real headless browser
# (tests/test_report_html.py drives it with Playwright's Python client; no browser is downloaded).
set -euo pipefail
command -v chromium >/dev/null && { echo "chromium ready: $(command -v chromium)"; exit 0; }
sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
sudo_if_needed apt-get update -q
sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
command -v chromium
