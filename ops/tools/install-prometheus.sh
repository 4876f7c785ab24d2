#!/usr/bin/env bash
# Installs promtool (and the prometheus server) from Debian's `prometheus` package.
# Idempotent: does nothing when promtool is already on PATH. Used by
# tests/integration/test_alerts.py (promtool check rules / promtool test rules).
set -euo pipefail
if command -v promtool >/dev/null; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-prometheus: run as root, or: sudo apt-get install -y prometheus" >&2
  exit 1
fi
echo "install-prometheus: apt-get install prometheus (promtool)" >&2
export DEBIAN_FRONTEND=noninteractive
# Only the binaries are wanted, not a running server: a temporary policy-rc.d (exit 101)
# tells the package scripts not to start the service. Removed again on exit.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
# --no-install-recommends: skips the node exporter and other extras.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
command -v promtool >/dev/null \
  || { echo "install-prometheus: promtool still not on PATH after install" >&2; exit 1; }
