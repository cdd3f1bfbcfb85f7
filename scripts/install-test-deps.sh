#!/usr/bin/env bash
# Installs what the test suite runs against when it is missing: Debian's prometheus
# package (promtool lints the exposition) and chromium (renders the report page headless).
# Needs root and Debian's package archive.
set -euo pipefail

need=()
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps: missing ${need[*]}; run as root, or: sudo apt-get install ${need[*]}" >&2
  exit 1
fi
echo "install-test-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# The packages' own services are not wanted: tests start what they need themselves.
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
pkill -x prometheus >/dev/null 2>&1 || true
command -v promtool >/dev/null
command -v chromium >/dev/null
