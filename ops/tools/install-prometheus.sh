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
apt-get update -qq
# --no-install-recommends: only the binaries are needed, not the node exporter and friends.
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# The package enables a prometheus server service; on a dev or CI machine it is not wanted.
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
command -v promtool >/dev/null \
  || { echo "install-prometheus: promtool still not on PATH after install" >&2; exit 1; }
