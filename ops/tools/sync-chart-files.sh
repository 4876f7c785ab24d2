#!/usr/bin/env bash
# Copies the alert rules and the dashboard into the Helm chart's files/ (the chart renders
# them as a PrometheusRule and a dashboard ConfigMap; Helm cannot read files outside the
# chart). Run after editing ops/alerts/*.rules.yaml or ops/dashboards/build.py.
# --check: compare only, exit 1 when a copy is stale (tests do the same comparison).
set -euo pipefail
cd "$(dirname "$0")/../.."
files_dir=helm/imconnector-consumer/files
pairs=(
  "ops/alerts/imconnector-consumer.rules.yaml:$files_dir/imconnector-consumer.rules.yaml"
  "ops/alerts/imconnector-consumer-external-lag.rules.yaml:$files_dir/imconnector-consumer-external-lag.rules.yaml"
  "ops/dashboards/imconnector-consumer.json:$files_dir/imconnector-consumer.json"
)
if [ "${1:-}" != "--check" ]; then
  python_bin=.venv/bin/python
  [ -x "$python_bin" ] || python_bin=python3
  "$python_bin" ops/dashboards/build.py >/dev/null
fi
status=0
for pair in "${pairs[@]}"; do
  src="${pair%%:*}" dst="${pair#*:}"
  if [ "${1:-}" = "--check" ]; then
    cmp -s "$src" "$dst" || { echo "sync-chart-files: $dst differs from $src" >&2; status=1; }
  else
    mkdir -p "$(dirname "$dst")"
    cp "$src" "$dst"
  fi
done
exit $status
