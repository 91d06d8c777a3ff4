#!/usr/bin/env bash
# Retakes docs/dashboard.png: a fresh `tokenwatch serve --demo`, a few minutes
# of its traffic, and the console's dashboard as headless Chromium draws it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p tokenwatch-e2e --example dashboard_screenshot -- "$PWD/docs/dashboard.png" "${1:-150}"
