#!/usr/bin/env bash
# Builds kubernetes-sigs/agent-sandbox's controller from the Go module proxy, as a benchmark tool
# for `make bench-compare` (never shipped, never part of Palisade's images), and writes its four
# CRDs with spec.conversion set to `strategy: None` (the released ones name a conversion webhook
# Service that does not exist out of cluster; the bench runs the controller with
# --enable-webhook=false). Skips the build when the binary exists.
#
#   e2e/compare/build.sh [OUT_DIR]
#
# OUT_DIR (default ~/.cache/palisade/tools/agent-sandbox-v0.5.6) receives
#   agent-sandbox-controller            the controller binary
#   crds-conversion-none/*.yaml          the patched CRDs
# GOMODCACHE and GOCACHE live under ~/.cache/palisade/go-agent-sandbox (AGENT_SANDBOX_GO_CACHE).
# Needs Go >= 1.26 and the Go module proxy (GOPROXY as configured).
set -euo pipefail

VERSION="${AGENT_SANDBOX_VERSION:-v0.5.6}"
MODULE="sigs.k8s.io/agent-sandbox"
OUT="${1:-${HOME}/.cache/palisade/tools/agent-sandbox-${VERSION}}"
GO_CACHE="${AGENT_SANDBOX_GO_CACHE:-${HOME}/.cache/palisade/go-agent-sandbox}"
BIN="${OUT}/agent-sandbox-controller"
CRDS="${OUT}/crds-conversion-none"

say() { echo "compare/build.sh: $*"; }
die() {
  echo "compare/build.sh: ERROR: $*" >&2
  exit 1
}

command -v go >/dev/null 2>&1 || die "'go' not found in PATH (Go >= 1.26 builds agent-sandbox ${VERSION})"
export GOMODCACHE="${GO_CACHE}/mod" GOCACHE="${GO_CACHE}/cache" GOFLAGS="-p=2" GOTOOLCHAIN=local
export GOWORK=off GO111MODULE=on CGO_ENABLED=0
mkdir -p "${OUT}" "${GOMODCACHE}" "${GOCACHE}"

if [[ -x "${BIN}" ]]; then
  say "${BIN} exists (delete it to rebuild)"
else
  say "go install ${MODULE}/cmd/agent-sandbox-controller@${VERSION}"
  # `go install pkg@version` builds the module as released: its go.mod, no replace directives.
  GOBIN="${OUT}/.gobin" go install -trimpath "${MODULE}/cmd/agent-sandbox-controller@${VERSION}"
  mv "${OUT}/.gobin/agent-sandbox-controller" "${BIN}.tmp"
  rmdir "${OUT}/.gobin" 2>/dev/null || true
  mv "${BIN}.tmp" "${BIN}"
  say "built ${BIN}"
fi

# The module's source (downloaded by the install above, or fetched now when the binary was
# cached but the module cache was cleared).
SRC="${GOMODCACHE}/${MODULE}@${VERSION}"
if [[ ! -d "${SRC}/k8s/crds" ]]; then
  (cd "${GO_CACHE}" && go mod download "${MODULE}@${VERSION}") >/dev/null
fi
[[ -d "${SRC}/k8s/crds" ]] || die "no k8s/crds in ${SRC}"

tmp="$(mktemp -d "${OUT}/.crds.XXXXXX")"
trap 'rm -rf "${tmp}"' EXIT
n=0
for f in "${SRC}"/k8s/crds/*.yaml; do
  # Each CRD ends with `  conversion:` then `    strategy: Webhook` and its webhook block:
  # keep everything before it, then conversion None.
  out="${tmp}/$(basename "${f}")"
  awk '/^  conversion:$/ {exit} {print}' "${f}" >"${out}"
  printf '  conversion:\n    strategy: None\n' >>"${out}"
  grep -q '^kind: CustomResourceDefinition$' "${out}" || die "$(basename "${f}") is not a CRD"
  grep -q 'strategy: Webhook' "${out}" && die "$(basename "${f}") still names a conversion webhook"
  n=$((n + 1))
done
[[ ${n} -eq 4 ]] || die "expected 4 CRDs in ${SRC}/k8s/crds, found ${n}"
rm -rf "${CRDS}"
mv "${tmp}" "${CRDS}"
trap - EXIT
say "wrote ${n} CRDs (conversion: None) to ${CRDS}"
