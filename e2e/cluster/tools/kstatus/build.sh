#!/usr/bin/env bash
# Builds the e2e suite's kstatus tool (main.go: the real kstatus library and Argo CD's Lua)
# into ${PALISADE_E2E_CACHE:-$HOME/.cache/palisade/e2e}/tools/kstatus-<cli-utils version>/
# and prints the binary's path (for KSTATUS_BIN). Rebuilds only when go.mod, go.sum or
# main.go changed. About 10 s on 2 cores with a warm module cache.
# Usage: e2e/cluster/tools/kstatus/build.sh
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "sigs.k8s.io/cli-utils" { print $2; exit }' "${here}/go.mod")"
if [[ -z "${version}" ]]; then
  echo "build.sh: sigs.k8s.io/cli-utils is not required in ${here}/go.mod" >&2
  exit 1
fi
out_dir="${PALISADE_E2E_CACHE:-${HOME}/.cache/palisade/e2e}/tools/kstatus-${version}"
bin="${out_dir}/kstatus"
stamp="$(cat "${here}/go.mod" "${here}/go.sum" "${here}/main.go" | sha256sum | cut -d' ' -f1)"

if [[ ! -x "${bin}" || "$(cat "${bin}.stamp" 2>/dev/null)" != "${stamp}" ]]; then
  mkdir -p "${out_dir}"
  tmp="$(mktemp "${out_dir}/.kstatus.XXXXXX")"
  trap 'rm -f "${tmp}"' EXIT
  (
    cd "${here}"
    GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOWORK=off CGO_ENABLED=0 \
      GOFLAGS="-mod=readonly -buildvcs=false" \
      go build -trimpath -ldflags="-s -w" -o "${tmp}" .
  ) >&2
  mv -f "${tmp}" "${bin}"
  printf '%s\n' "${stamp}" >"${bin}.stamp"
fi
printf '%s\n' "${bin}"
