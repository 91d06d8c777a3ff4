#!/usr/bin/env bash
# Retakes docs/dashboard.png: the browser test logs into a fresh server with
# real traffic and an alert, and saves the dashboard as the browser drew it.
set -euo pipefail
cd "$(dirname "$0")/.."
TOKENWATCH_SCREENSHOT="$PWD/docs/dashboard.png" \
  cargo test -p tokenwatch-e2e --test ui console_in_a_real_browser -- --exact
echo "wrote docs/dashboard.png"
