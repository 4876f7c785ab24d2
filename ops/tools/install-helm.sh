#!/usr/bin/env bash
# Installs the pinned helm CLI into ops/.tools/bin/helm (git-ignored), built from the Go
# module proxy because no other download is reachable. Idempotent: skips when that exact
# build is already there. Used by tests/integration/test_helm.py.
set -euo pipefail
cd "$(dirname "$0")/../.."
version="${HELM_VERSION:-v3.22.0}"
bin_dir="$PWD/ops/.tools/bin"
helm="$bin_dir/helm"
stamp="$bin_dir/.helm-build"
if [ -x "$helm" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$version" ] \
  && [ "$("$helm" version --template '{{ .Version }}' 2>/dev/null)" = "$version" ]; then
  exit 0
fi
command -v go >/dev/null \
  || { echo "install-helm: Go is required to build helm $version (go install)" >&2; exit 1; }
mkdir -p "$bin_dir"
echo "install-helm: building helm $version into $helm (takes a few minutes the first time)" >&2
export GOFLAGS=-mod=mod CGO_ENABLED=0
# helm's Makefile stamps the version and the Kubernetes version it assumes (for
# .Capabilities.KubeVersion and kubeVersion checks) with -ldflags; `go install` alone would
# report v3.x-dev and Kubernetes v1.20, so do the same from helm's own go.mod.
gomod="$(go mod download -json "helm.sh/helm/v3@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
k8s_minor="$(sed -n 's/^[[:space:]]*k8s\.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod" | head -1)"
[ -n "$k8s_minor" ] || { echo "install-helm: cannot read the client-go version from $gomod" >&2; exit 1; }
ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags="$ldflags -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
done
GOBIN="$bin_dir" go install -trimpath -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$version"
echo "$version" > "$stamp"
"$helm" version --short
