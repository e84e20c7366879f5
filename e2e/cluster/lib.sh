# shellcheck shell=bash disable=SC2034 # (variables are used by the scripts that source this)
# Shared settings for build.sh, up.sh and down.sh. Sourced, not executed.

CLUSTER_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${CLUSTER_DIR}/../.." && pwd)"
TOOLS_DIR="${CLUSTER_DIR}/tools"

# Version of a module required by one of the build modules under tools/,
# read from its go.mod so the go.mod files stay the single source of truth.
tool_version() { # <tools subdir> <module path>
  local v
  v="$(awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) && !/=>/ {
         print ($1 == "require") ? $3 : $2; exit }' "${TOOLS_DIR}/$1/go.mod")"
  if [[ -z "${v}" ]]; then
    echo "lib.sh: cannot find $2 in ${TOOLS_DIR}/$1/go.mod" >&2
    return 1
  fi
  printf '%s\n' "${v}"
}

K8S_VERSION="$(tool_version kubernetes k8s.io/kubernetes)"
ETCD_VERSION="$(tool_version etcd go.etcd.io/etcd/server/v3)"
KWOK_VERSION="$(tool_version kwok sigs.k8s.io/kwok)"
HELM_VERSION="$(tool_version helm helm.sh/helm/v3)"
CONTAINERD_VERSION="$(tool_version containerd github.com/containerd/containerd/v2)"
GVISOR_VERSION="$(tool_version gvisor gvisor.dev/gvisor)"
KUBE_ROUTER_VERSION="$(tool_version kube-router github.com/cloudnativelabs/kube-router/v2)"
COREDNS_VERSION="$(tool_version coredns github.com/coredns/coredns)"

# The real node (node.sh): on unless PALISADE_E2E_NODE=0. It needs root (network namespaces,
# cgroups, mounts) and iptables, ipset, conntrack and runc from Debian.
NODE_ENABLED="${PALISADE_E2E_NODE:-1}"

# Nothing of the cluster goes through a proxy (every address it talks to is local).
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy

# Both directories are used by their real paths (symbolic links resolved): gVisor's gofer refuses
# a bind mount whose path goes through a symbolic link ("failed to safely mount: expected to
# open ..., but found ..."), and down.sh finds the node's mounts in /proc/mounts, which shows
# real paths. A checkout whose target/ is a link (as .ci/run makes it) would otherwise start no
# gVisor pod.
E2E_CACHE="$(realpath -m -- "${PALISADE_E2E_CACHE:-${HOME}/.cache/palisade/e2e}")"
BIN_DIR="${E2E_CACHE}/${K8S_VERSION}/bin"

STATE_DIR="$(realpath -m -- "${PALISADE_E2E_STATE:-${REPO_ROOT}/target/e2e}")"
# Marker that makes down.sh willing to delete a state directory.
STATE_MARKER=".palisade-e2e-state"

ETCD_PORT="${PALISADE_E2E_ETCD_PORT:-23790}"
ETCD_PEER_PORT="${PALISADE_E2E_ETCD_PEER_PORT:-23800}"
APISERVER_PORT="${PALISADE_E2E_APISERVER_PORT:-16443}"
KCM_PORT="${PALISADE_E2E_KCM_PORT:-16457}"
SCHEDULER_PORT="${PALISADE_E2E_SCHEDULER_PORT:-16459}"
KWOK_PORT="${PALISADE_E2E_KWOK_PORT:-16447}"

# Start order; down.sh stops them in reverse.
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

PID_DIR="${STATE_DIR}/run"
LOG_DIR="${STATE_DIR}/logs"

# True if pid $1 is a live (non-zombie) process.
pid_alive() {
  kill -0 "$1" 2>/dev/null || return 1
  local stat
  if stat="$(cat "/proc/$1/stat" 2>/dev/null)"; then
    stat="${stat##*) }"
    [[ "${stat:0:1}" != "Z" ]] || return 1
  fi
}

# Prints the recorded pid of component $1 if that process is alive and still
# runs the component's binary (guards against pid reuse).
component_pid() {
  local pidfile="${PID_DIR}/$1.pid" pid exe
  [[ -f "${pidfile}" ]] || return 1
  pid="$(<"${pidfile}")"
  [[ "${pid}" =~ ^[0-9]+$ ]] || return 1
  pid_alive "${pid}" || return 1
  if exe="$(readlink "/proc/${pid}/exe" 2>/dev/null)"; then
    exe="${exe% (deleted)}"
    [[ "${exe##*/}" == "$1" ]] || return 1
  fi
  printf '%s\n' "${pid}"
}

# Sends SIGTERM to the given running components, then waits for them; SIGKILL
# after PALISADE_E2E_STOP_GRACE seconds.
stop_group() { # <component...>
  local grace="${PALISADE_E2E_STOP_GRACE:-15}" c pid i deadline
  local -a pids=() names=()
  for c in "$@"; do
    if pid="$(component_pid "${c}")"; then
      kill -TERM "${pid}" 2>/dev/null || true
      pids+=("${pid}")
      names+=("${c}")
    fi
  done
  deadline=$((SECONDS + grace))
  for i in "${!pids[@]}"; do
    while pid_alive "${pids[i]}"; do
      if ((SECONDS >= deadline)); then
        echo "${names[i]} (pid ${pids[i]}) still running after ${grace}s: sending SIGKILL" >&2
        kill -KILL "${pids[i]}" 2>/dev/null || true
        sleep 0.2
        break
      fi
      sleep 0.1
    done
    # Reaps the process if it is our child (up.sh after a failed start).
    wait "${pids[i]}" 2>/dev/null || true
    echo "stopped ${names[i]} (pid ${pids[i]})"
  done
}

# Stops every running component by its recorded pid, etcd last (the API
# server does not shut down cleanly without it), and removes the pid files.
stop_components() {
  local c
  local -a rest=()
  for c in "${COMPONENTS[@]}"; do
    [[ "${c}" == etcd ]] || rest=("${c}" "${rest[@]}")
  done
  stop_group "${rest[@]}"
  stop_group etcd
  for c in "${COMPONENTS[@]}"; do
    rm -f "${PID_DIR}/${c}.pid"
  done
}

# Deletes the state directory, but only one that up.sh created (it holds the
# marker file), so a mistaken PALISADE_E2E_STATE cannot wipe anything else.
remove_state() {
  [[ -e "${STATE_DIR}" ]] || return 0
  if [[ ! -f "${STATE_DIR}/${STATE_MARKER}" ]]; then
    echo "not removing ${STATE_DIR}: no ${STATE_MARKER} marker in it (not created by up.sh?)" >&2
    return 1
  fi
  rm -rf -- "${STATE_DIR}"
}
