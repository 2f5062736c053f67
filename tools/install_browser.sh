#!/usr/bin/env bash
# Install the headless browser that tools/check_book.py drives: Debian's `chromium` package.
# Idempotent: does nothing when /usr/bin/chromium (or $CHROMIUM) is already there.
# Playwright's own browser downloads are never used (they need hosts other than package registries).
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ -x "$CHROMIUM" ]; then
  echo "Chromium already installed: $CHROMIUM"
  exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      SUDO="sudo"
    else
      echo "error: installing chromium needs root: run as root, or install sudo" >&2
      exit 1
    fi
  fi
  echo "Installing Debian's chromium package (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
  if [ -x "$CHROMIUM" ]; then
    echo "Chromium installed: $CHROMIUM"
    exit 0
  fi
  echo "error: apt-get installed chromium but $CHROMIUM is missing; set CHROMIUM to its path" >&2
  exit 1
fi

echo "error: no Chromium at $CHROMIUM and no apt-get to install it." >&2
echo "       Install Chromium (or Chrome) with your system's package manager, then run" >&2
echo "       CHROMIUM=/path/to/chromium .venv/bin/python tools/check_book.py _build/html" >&2
exit 1
