#!/usr/bin/env bash
# Builds the e2e cluster's binaries from the Go module proxy into
# ${PALISADE_E2E_CACHE:-$HOME/.cache/palisade/e2e}/<k8s-version>/bin/.
# Exits at once when every binary is already there and up to date.
# Usage: e2e/cluster/build.sh [--force]
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

force=0
case "${1:-}" in
  "") ;;
  --force) force=1 ;;
  -h | --help)
    sed -n '2,5p' "${BASH_SOURCE[0]}"
    exit 0
    ;;
  *)
    echo "build.sh: unknown argument: $1" >&2
    exit 2
    ;;
esac

# name|tools module dir|package|extra -ldflags
K8S_MINOR="$(cut -d. -f2 <<<"${K8S_VERSION}")"
k8s_x="-X k8s.io/component-base/version.gitVersion=${K8S_VERSION}"
k8s_x+=" -X k8s.io/component-base/version.gitMajor=1"
k8s_x+=" -X k8s.io/component-base/version.gitMinor=${K8S_MINOR}"
k8s_x+=" -X k8s.io/component-base/version.gitTreeState=clean"
k8s_x+=" -X k8s.io/client-go/pkg/version.gitVersion=${K8S_VERSION}"
k8s_x+=" -X k8s.io/client-go/pkg/version.gitMajor=1"
k8s_x+=" -X k8s.io/client-go/pkg/version.gitMinor=${K8S_MINOR}"
k8s_x+=" -X k8s.io/client-go/pkg/version.gitTreeState=clean"
HELM_K8S_MINOR="$(awk '$1 == "k8s.io/client-go" && !/=>/ { split($2, v, "."); print v[2]; exit }' \
  "${TOOLS_DIR}/helm/go.mod")"
helm_x="-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}"
helm_x+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in pkg/chartutil pkg/lint/rules; do
  helm_x+=" -X helm.sh/helm/v3/${pkg}.k8sVersionMajor=1"
  helm_x+=" -X helm.sh/helm/v3/${pkg}.k8sVersionMinor=${HELM_K8S_MINOR}"
done

TARGETS=(
  "etcd|etcd|go.etcd.io/etcd/server/v3|"
  "kube-apiserver|kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|${k8s_x}"
  "kube-controller-manager|kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager|${k8s_x}"
  "kube-scheduler|kubernetes|k8s.io/kubernetes/cmd/kube-scheduler|${k8s_x}"
  "kubectl|kubernetes|k8s.io/kubernetes/cmd/kubectl|${k8s_x}"
  "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok|-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}"
  "helm|helm|helm.sh/helm/v3/cmd/helm|${helm_x}"
)

# A binary is up to date when it exists and its stamp matches the hash of its
# build module (go.mod + go.sum) and flags.
stamp_of() { # <module dir> <ldflags>
  { cat "${TOOLS_DIR}/$1/go.mod" "${TOOLS_DIR}/$1/go.sum"; printf '%s\n' "$2"; } |
    sha256sum | cut -d' ' -f1
}

up_to_date() { # <name> <module dir> <ldflags>
  [[ -x "${BIN_DIR}/$1" && -f "${BIN_DIR}/.$1.stamp" ]] &&
    [[ "$(<"${BIN_DIR}/.$1.stamp")" == "$(stamp_of "$2" "$3")" ]]
}

all_up_to_date() {
  local t name dir pkg ldx
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name dir pkg ldx <<<"${t}"
    up_to_date "${name}" "${dir}" "${ldx}" || return 1
  done
}

if [[ "${force}" == 0 ]] && all_up_to_date; then
  echo "build.sh: all binaries present in ${BIN_DIR}"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: 'go' not found in PATH (Go >= 1.26 is needed to build kwok)" >&2
  exit 1
fi

mkdir -p "${BIN_DIR}"
# Serialise concurrent builds into the same cache.
if command -v flock >/dev/null 2>&1; then
  exec 9>"${BIN_DIR}/.build.lock"
  flock 9
  if [[ "${force}" == 0 ]] && all_up_to_date; then
    echo "build.sh: all binaries present in ${BIN_DIR} (built concurrently)"
    exit 0
  fi
fi

# Reproducible, static builds; go.sum must already list every module (no
# silent go.mod/go.sum edits), and no go.work from a parent folder applies.
# The installed toolchain is used unless GOTOOLCHAIN says otherwise.
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}" GOWORK=off CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false"
export GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"

echo "build.sh: $(go version)"
echo "build.sh: kubernetes ${K8S_VERSION}, etcd ${ETCD_VERSION}, kwok ${KWOK_VERSION}, helm ${HELM_VERSION}"
echo "build.sh: output ${BIN_DIR}"

total_start=${SECONDS}
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name dir pkg ldx <<<"${t}"
  if [[ "${force}" == 0 ]] && up_to_date "${name}" "${dir}" "${ldx}"; then
    echo "build.sh: ${name}: up to date"
    continue
  fi
  echo "build.sh: ${name}: building ${pkg}"
  start=${SECONDS}
  tmp="${BIN_DIR}/.${name}.tmp"
  rm -f "${tmp}" "${BIN_DIR}/.${name}.stamp"
  (
    cd "${TOOLS_DIR}/${dir}"
    nice -n 19 go build -trimpath -ldflags="-s -w ${ldx}" -o "${tmp}" "${pkg}"
  ) || {
    rm -f "${tmp}"
    echo "build.sh: FAILED to build ${name} (${pkg} in ${TOOLS_DIR}/${dir})" >&2
    exit 1
  }
  mv -f "${tmp}" "${BIN_DIR}/${name}"
  stamp_of "${dir}" "${ldx}" >"${BIN_DIR}/.${name}.stamp"
  echo "build.sh: ${name}: built in $((SECONDS - start))s"
done
echo "build.sh: all binaries built in $((SECONDS - total_start))s"
