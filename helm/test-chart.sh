#!/usr/bin/env bash
# Tests helm/gatekeeper without a Kubernetes control plane (none can run here):
#   render  — lint, the schema's verdict on good and bad value sets, every rendered manifest
#             validated offline against the Kubernetes schemas, the chart's invariants;
#   run     — what the chart renders, run as containers of the project's image on one Docker
#             network (the pods' DNS names as aliases): the cluster must form, unseal and serve a
#             key. Needs the image (deploy/build-image.sh; GATEKEEPER_IMAGE, default
#             gatekeeper:compose-test as .ci/run builds it).
# promtool checks the alerts (with their unit tests, helm/alerts-test.yaml) and the dashboard.
# Helm itself comes from PyPI (helm-python-sdk bundles Helm's Go SDK), the schemas from
# kubernetes-validate; both go into a venv this script makes under target/.
#
# Usage: helm/test-chart.sh [render|run|all]   (default all)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/chart-venv
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import helm_python, kubernetes_validate, yaml" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet 'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0' 'pyyaml>=6,<7'
fi
# promtool (checks the alerts and the dashboard's queries, runs the alerts' unit tests
# helm/alerts-test.yaml): from Debian's prometheus package, unpacked under target/, not installed
# (installing it would start a Prometheus server).
promtool=target/promtool/promtool
if [ ! -x "$promtool" ]; then
  tmp="$(mktemp -d)"
  (cd "$tmp" && apt-get download -q prometheus >/dev/null 2>&1) || {
    echo "cannot download Debian's prometheus package (for promtool); run apt-get update?" >&2
    exit 1
  }
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
  mkdir -p target/promtool
  cp "$tmp/x/usr/bin/promtool" "$promtool"
  rm -rf "$tmp"
fi
export PROMTOOL="$PWD/$promtool"
exec "$venv/bin/python" helm/test_chart.py "${1:-all}"
