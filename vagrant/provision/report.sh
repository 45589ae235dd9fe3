#!/usr/bin/env bash
# What the report's browser test needs: Debian's chromium, run headless by tests/test_report.py
# to open report/index.html from file:// (no server, no network). Not needed to build a report.
# Usage: report.sh [--check]
here=$(cd "$(dirname "$0")" && pwd)
source "$here/common.sh" "$@"
need chromium fonts-dejavu-core
finish
