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

containerd_x="-X github.com/containerd/containerd/v2/version.Version=${CONTAINERD_VERSION}"
containerd_x+=" -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"

# name|module dir (under tools/)|package|ldflags|overlay: <module>:<file>=<patch under e2e/cluster>
TARGETS=(
  "etcd|etcd|go.etcd.io/etcd/server/v3|"
  "kube-apiserver|kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|${k8s_x}"
  "kube-controller-manager|kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager|${k8s_x}"
  "kube-scheduler|kubernetes|k8s.io/kubernetes/cmd/kube-scheduler|${k8s_x}"
  "kubectl|kubernetes|k8s.io/kubernetes/cmd/kubectl|${k8s_x}"
  "kwok|kwok|sigs.k8s.io/kwok/cmd/kwok|-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}"
  "helm|helm|helm.sh/helm/v3/cmd/helm|${helm_x}"
)
# The real node (node.sh), built when it is on (PALISADE_E2E_NODE=1).
NODE_TARGETS=(
  "kubelet|kubernetes|k8s.io/kubernetes/cmd/kubelet|${k8s_x}"
  "kube-proxy|kubernetes|k8s.io/kubernetes/cmd/kube-proxy|${k8s_x}"
  "containerd|containerd|github.com/containerd/containerd/v2/cmd/containerd|${containerd_x}"
  "containerd-shim-runc-v2|containerd|github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2|${containerd_x}"
  "ctr|containerd|github.com/containerd/containerd/v2/cmd/ctr|${containerd_x}"
  "runsc|gvisor|gvisor.dev/gvisor/runsc|"
  "containerd-shim-runsc-v1|gvisor|gvisor.dev/gvisor/shim||github.com/containerd/containerd/v2:pkg/sys/oom_linux.go=patches/containerd-sys-oom_linux.go"
  "cni/bridge|cni|github.com/containernetworking/plugins/plugins/main/bridge|"
  "cni/host-local|cni|github.com/containernetworking/plugins/plugins/ipam/host-local|"
  "cni/loopback|cni|github.com/containernetworking/plugins/plugins/main/loopback|"
  "cni/portmap|cni|github.com/containernetworking/plugins/plugins/meta/portmap|"
  "kube-router|kube-router|github.com/cloudnativelabs/kube-router/v2/cmd/kube-router|-X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=${KUBE_ROUTER_VERSION}"
  "coredns|coredns|palisade.dev/e2e/cluster/tools/coredns|-X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}"
  "registry|registry|github.com/distribution/distribution/v3/cmd/registry|"
  "crane|crane|github.com/google/go-containerregistry/cmd/crane|"
  "probe|../probe|palisade.dev/e2e/cluster/probe|"
)
[[ "${NODE_ENABLED}" != 1 ]] || TARGETS+=("${NODE_TARGETS[@]}")

# A binary is up to date when it exists and its stamp matches the hash of its
# build module (go.mod + go.sum) and flags.
# What a binary is built from: the build module's go.mod, go.sum and own Go files, the flags,
# and the overlay's patch.
stamp_of() { # <module dir> <ldflags> [overlay]
  local patch=""
  [[ -n "${3:-}" ]] && patch="${CLUSTER_DIR}/${3#*=}"
  {
    cat "${TOOLS_DIR}/$1/go.mod"
    cat "${TOOLS_DIR}/$1/go.sum" 2>/dev/null || true
    find "${TOOLS_DIR}/$1" -maxdepth 1 -name '*.go' -print0 | sort -z | xargs -0 -r cat
    [[ -z "${patch}" ]] || cat "${patch}"
    printf '%s\n' "$2" "${3:-}"
  } | sha256sum | cut -d' ' -f1
}

up_to_date() { # <name> <module dir> <ldflags> [overlay]
  [[ -x "${BIN_DIR}/$1" && -f "${BIN_DIR}/.${1//\//_}.stamp" ]] &&
    [[ "$(<"${BIN_DIR}/.${1//\//_}.stamp")" == "$(stamp_of "$2" "$3" "${4:-}")" ]]
}

all_up_to_date() {
  local t name dir pkg ldx overlay
  for t in "${TARGETS[@]}"; do
    IFS='|' read -r name dir pkg ldx overlay <<<"${t}"
    up_to_date "${name}" "${dir}" "${ldx}" "${overlay}" || return 1
  done
}

# Prepares the build of a binary with one file of a dependency replaced by a patch of
# e2e/cluster/patches/ (<module>:<file>=<patch>): Go refuses overlays of the module cache, so
# the build module is vendored into a work directory of the cache and the vendored file is
# overlaid. Prints the work directory; writes the overlay file there.
overlay_build_dir() { # <module dir> <module>:<file>=<patch> <name>
  local module="${2%%:*}" rest="${2#*:}" work
  work="${E2E_CACHE}/${K8S_VERSION}/work/${3//\//_}"
  rm -rf "${work}"
  mkdir -p "${work}"
  cp "${TOOLS_DIR}/$1/go.mod" "${TOOLS_DIR}/$1/go.sum" "${work}/"
  (cd "${work}" && go mod vendor) >&2
  local vendored="${work}/vendor/${module}/${rest%%=*}"
  [[ -f "${vendored}" ]] || {
    echo "build.sh: the overlay's file ${vendored} does not exist" >&2
    return 1
  }
  printf '{"Replace": {"%s": "%s"}}\n' "${vendored}" "${CLUSTER_DIR}/${rest#*=}" >"${work}/overlay.json"
  printf '%s\n' "${work}"
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
echo "build.sh: containerd ${CONTAINERD_VERSION}, gvisor ${GVISOR_VERSION}, kube-router ${KUBE_ROUTER_VERSION}, coredns ${COREDNS_VERSION}"
echo "build.sh: output ${BIN_DIR}"

total_start=${SECONDS}
mkdir -p "${BIN_DIR}/cni"
for t in "${TARGETS[@]}"; do
  IFS='|' read -r name dir pkg ldx overlay <<<"${t}"
  if [[ "${force}" == 0 ]] && up_to_date "${name}" "${dir}" "${ldx}" "${overlay}"; then
    echo "build.sh: ${name}: up to date"
    continue
  fi
  echo "build.sh: ${name}: building ${pkg}"
  start=${SECONDS}
  stamp="${BIN_DIR}/.${name//\//_}.stamp"
  tmp="${BIN_DIR}/.${name//\//_}.tmp"
  rm -f "${tmp}" "${stamp}"
  extra=()
  build_dir="${TOOLS_DIR}/${dir}"
  if [[ -n "${overlay}" ]]; then
    echo "build.sh: ${name}: with ${overlay#*=} in place of ${overlay%=*}"
    build_dir="$(overlay_build_dir "${dir}" "${overlay}" "${name}")"
    extra=("-mod=vendor" "-overlay=${build_dir}/overlay.json")
  fi
  (
    cd "${build_dir}"
    nice -n 19 go build -trimpath "${extra[@]}" -ldflags="-s -w ${ldx}" -o "${tmp}" "${pkg}"
  ) || {
    rm -f "${tmp}"
    echo "build.sh: FAILED to build ${name} (${pkg} in ${TOOLS_DIR}/${dir})" >&2
    exit 1
  }
  mv -f "${tmp}" "${BIN_DIR}/${name}"
  stamp_of "${dir}" "${ldx}" "${overlay}" >"${stamp}"
  echo "build.sh: ${name}: built in $((SECONDS - start))s"
done
echo "build.sh: all binaries built in $((SECONDS - total_start))s"
