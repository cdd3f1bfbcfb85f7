#!/usr/bin/env bash
# Installs what the test suite runs against when it is missing:
# - Debian's prometheus (promtool lints the exposition and unit-tests the rules; the
#   prometheus server scrapes a running collector end to end) and
#   prometheus-alertmanager (amtool checks the example config; the server receives the
#   alerts a simulated fleet fires; Prometheus also receives the collector's remote write),
# - victoria-metrics (a remote-write receiver the collector's tests push to and query),
# - chromium (renders the cost report page headless in a test),
# - cargo-deb 3 (builds the .deb packages that a test installs with dpkg; the test
#   packages the debug binaries, which cargo-deb 3 accepts with a warning),
# - systemd (systemd-analyze verify and, from systemd 250, security --offline check the
#   units; dpkg, getent and useradd, which the .deb test uses, are on every Debian),
# - kubernetes-validate from PyPI (validates the Kubernetes manifests offline),
# - Debian's postgresql (initdb and the server: ledger tests start their own server in a
#   temporary directory; the cluster the package creates is dropped, never started),
# - tmux (runs `gpulse-agent top` in a pseudo-terminal and shows a test its screen).
# Debian packages need root and Debian's package archive.
set -euo pipefail

apt_need=()
command -v promtool >/dev/null 2>&1 || apt_need+=(prometheus)
command -v prometheus >/dev/null 2>&1 || apt_need+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || apt_need+=(prometheus-alertmanager)
command -v amtool >/dev/null 2>&1 || apt_need+=(prometheus-alertmanager)
command -v chromium >/dev/null 2>&1 || apt_need+=(chromium)
command -v victoria-metrics >/dev/null 2>&1 || apt_need+=(victoria-metrics)
command -v systemd-analyze >/dev/null 2>&1 || apt_need+=(systemd)
command -v python3 >/dev/null 2>&1 || apt_need+=(python3 python3-pip)
command -v tmux >/dev/null 2>&1 || apt_need+=(tmux)
pg_initdb() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
pg_initdb || apt_need+=(postgresql)
mapfile -t apt_need < <(printf '%s\n' "${apt_need[@]}" | sort -u | sed '/^$/d')

if [ ${#apt_need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-test-deps: missing ${apt_need[*]}; run as root, or: sudo apt-get install ${apt_need[*]}" >&2
    exit 1
  fi
  echo "install-test-deps: installing ${apt_need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  # The packages' own services are not wanted: tests start what they need themselves,
  # on ports of their own. A policy-rc.d that answers 101 keeps the maintainer scripts
  # from starting them (Debian policy, invoke-rc.d and deb-systemd-invoke both ask it).
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_need[@]}" >/dev/null
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus prometheus-alertmanager victoria-metrics >/dev/null 2>&1 || true
  fi
  # Debian's postgresql creates a "main" cluster on install (policy-rc.d kept it from
  # starting): tests need none, so it goes, with its data, before anything uses it.
  if [[ " ${apt_need[*]} " == *" postgresql "* ]] && command -v pg_lsclusters >/dev/null 2>&1; then
    pg_lsclusters -h 2>/dev/null | while read -r version cluster _; do
      pg_dropcluster --stop "$version" "$cluster" || true
    done
  fi
fi

if ! cargo deb --version 2>/dev/null | grep -q '^cargo-deb 3\.'; then
  echo "install-test-deps: installing cargo-deb 3" >&2
  cargo install cargo-deb --locked --quiet --version '^3.8'
fi

if ! python3 -c 'import kubernetes_validate' >/dev/null 2>&1; then
  echo "install-test-deps: installing kubernetes-validate" >&2
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate
fi

command -v promtool >/dev/null
command -v prometheus >/dev/null
command -v victoria-metrics >/dev/null
command -v prometheus-alertmanager >/dev/null
command -v amtool >/dev/null
cargo deb --version | grep -q '^cargo-deb 3\.'
systemd_version=$(systemd-analyze --version | awk 'NR == 1 { print $2 }')
if [ "${systemd_version%%[^0-9]*}" -lt 250 ]; then
  echo "install-test-deps: systemd-analyze $systemd_version is too old for 'security --offline' (250 or later: Debian 12, Ubuntu 24.04)" >&2
  exit 1
fi
python3 -c 'import kubernetes_validate' >/dev/null
pg_initdb
command -v setpriv >/dev/null
