#!/usr/bin/env bash
# Starts the Palisade e2e control plane on 127.0.0.1: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kwok with fake nodes. Writes an
# admin kubeconfig to ${PALISADE_E2E_STATE:-<repo>/target/e2e}/kubeconfig.
# Builds the binaries first if needed (see build.sh). Stop with down.sh.
# Usage: e2e/cluster/up.sh
set -euo pipefail
umask 077

# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ $# -gt 0 ]]; then
  sed -n '2,6p' "${BASH_SOURCE[0]}"
  [[ "$1" == "-h" || "$1" == "--help" ]] && exit 0
  exit 2
fi

TIMEOUT="${PALISADE_E2E_TIMEOUT:-180}"
VERBOSITY="${PALISADE_E2E_LOG_LEVEL:-1}"
API_QPS="${PALISADE_E2E_API_QPS:-200}"
API_BURST="${PALISADE_E2E_API_BURST:-400}"
SERVICE_CIDR="10.96.0.0/16"
SERVICE_IP="10.96.0.1"
SA_ISSUER="https://kubernetes.default.svc.cluster.local"
# What the API server writes into the "kubernetes" Service's endpoints
# (Endpoints reject loopback addresses). Nothing connects to it: the server
# listens on 127.0.0.1 only. Default from TEST-NET-3 (RFC 5737), an address no
# machine of this project uses.
ADVERTISE_ADDRESS="${PALISADE_E2E_ADVERTISE_ADDRESS:-203.0.113.254}"
# The real node (node.sh, lib.sh's NODE_ENABLED).
# shellcheck source=SCRIPTDIR/node.sh
source "${CLUSTER_DIR}/node.sh"
if [[ "${NODE_ENABLED}" == 1 ]]; then
  # Pods reach the API server through the kubernetes Service: at the host end of the node's link
  # (a forwarder there leads to 127.0.0.1).
  ADVERTISE_ADDRESS="${HOST_IP}"
fi

PKI="${STATE_DIR}/pki"
CONF="${STATE_DIR}/config"
KUBECONFIG_PATH="${STATE_DIR}/kubeconfig"
API_URL="https://127.0.0.1:${APISERVER_PORT}"

say() { echo "up.sh: $*"; }
die() {
  echo "up.sh: ERROR: $*" >&2
  exit 1
}
[[ "${NODE_ENABLED}" != 1 ]] || node_preflight

# Fails with the tail of a component's log.
fail() { # <component or ""> <message>
  echo "up.sh: ERROR: $2" >&2
  if [[ -n "$1" && -f "${LOG_DIR}/$1.log" ]]; then
    echo "----- last 40 lines of ${LOG_DIR}/$1.log -----" >&2
    tail -n 40 "${LOG_DIR}/$1.log" >&2
    echo "-----" >&2
  fi
  exit 1
}

start_us="${EPOCHREALTIME/[.,]/}"
elapsed() { # seconds since start, one decimal
  local d=$((${EPOCHREALTIME/[.,]/} - start_us))
  printf '%d.%d' $((d / 1000000)) $((d / 100000 % 10))
}

# --- refuse to start a second cluster ---------------------------------------
running=()
for c in "${COMPONENTS[@]}"; do
  if pid="$(component_pid "${c}")"; then
    running+=("${c}=${pid}")
  fi
done
if [[ ${#running[@]} -gt 0 ]]; then
  die "a cluster is already running from ${STATE_DIR} (${running[*]}); run e2e/cluster/down.sh first"
fi

# --- binaries and tools -----------------------------------------------------
"${CLUSTER_DIR}/build.sh"
for c in "${COMPONENTS[@]}" kubectl; do
  [[ -x "${BIN_DIR}/${c}" ]] || die "missing ${BIN_DIR}/${c}; run e2e/cluster/build.sh"
done
command -v openssl >/dev/null 2>&1 || die "openssl not found (apt-get install -y openssl)"
KUBECTL=("${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" --request-timeout=20s)

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "ETCD_PORT=${ETCD_PORT}" "ETCD_PEER_PORT=${ETCD_PEER_PORT}" \
  "APISERVER_PORT=${APISERVER_PORT}" "KCM_PORT=${KCM_PORT}" \
  "SCHEDULER_PORT=${SCHEDULER_PORT}" "KWOK_PORT=${KWOK_PORT}"; do
  [[ "${p#*=}" =~ ^[0-9]+$ ]] || die "PALISADE_E2E_${p%%=*} is not a port number: ${p#*=}"
  if port_open "${p#*=}"; then
    die "127.0.0.1:${p#*=} is already in use; pick another port with PALISADE_E2E_${p%%=*}"
  fi
done

# --- fresh state ------------------------------------------------------------
# Leftovers of a crashed or failed run (nothing of it is running, see above): its real node, if
# this state directory had one (node_down leaves another state directory's node alone), whether
# or not this run starts one.
if [[ -f "${STATE_DIR}/${STATE_MARKER}" ]] && node_is_ours; then
  node_down
fi
remove_state || die "set PALISADE_E2E_STATE to an empty or up.sh-created directory"
mkdir -p "${PKI}" "${CONF}" "${LOG_DIR}" "${PID_DIR}" "${STATE_DIR}/etcd" "${STATE_DIR}/kwok-home"
touch "${STATE_DIR}/${STATE_MARKER}"

started=0
cleanup_on_failure() {
  local rc=$?
  if [[ ${rc} -ne 0 && ${started} -eq 1 ]]; then
    echo "up.sh: start failed; stopping what was started (logs kept in ${LOG_DIR}; down.sh removes them)" >&2
    stop_components >&2 || true
    [[ "${NODE_ENABLED}" != 1 ]] || node_down >&2 || true
  fi
}
trap cleanup_on_failure EXIT
trap 'exit 130' INT TERM

# --- PKI --------------------------------------------------------------------
cat >"${PKI}/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[v3_server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost,IP:${SERVICE_IP},IP:${HOST_IP},DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
[v3_client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
EOF

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() { # <name> <common name>
  ec_key "${PKI}/$1.key"
  openssl req -config "${PKI}/openssl.cnf" -x509 -new -key "${PKI}/$1.key" \
    -subj "/CN=$2" -days 3650 -sha256 -extensions v3_ca -out "${PKI}/$1.crt"
}
issue() { # <name> <subject> <extensions section> [<ca name>]
  local signer="${4:-ca}"
  ec_key "${PKI}/$1.key"
  openssl req -config "${PKI}/openssl.cnf" -new -key "${PKI}/$1.key" -subj "$2" |
    openssl x509 -req -CA "${PKI}/${signer}.crt" -CAkey "${PKI}/${signer}.key" \
      -set_serial "0x$(openssl rand -hex 16)" -days 365 -sha256 \
      -extfile "${PKI}/openssl.cnf" -extensions "$3" -out "${PKI}/$1.crt" 2>/dev/null
}

ca ca palisade-e2e-ca
issue apiserver "/CN=kube-apiserver" v3_server
issue admin "/O=system:masters/CN=palisade-e2e-admin" v3_client
# The API server's identity towards kubelets (logs, exec, port-forward); kubelets are reached
# by their InternalIP only, never by a name to look up.
issue apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" v3_client
issue kube-controller-manager "/CN=system:kube-controller-manager" v3_client
issue kube-scheduler "/CN=system:kube-scheduler" v3_client
issue kwok "/O=system:masters/CN=palisade-e2e-kwok" v3_client
# Front-proxy (request header) CA and client: lets the aggregation layer
# proxy to extension API servers and completes the extension-apiserver-
# authentication ConfigMap that delegated authentication reads.
ca front-proxy-ca palisade-e2e-front-proxy-ca
issue front-proxy-client "/CN=front-proxy-client" v3_client front-proxy-ca
# Service-account token signing key pair.
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "${PKI}/sa.key" 2>/dev/null
openssl pkey -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub"

write_kubeconfig() { # <path> <cert name>
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: palisade-e2e
  cluster:
    server: ${API_URL}
    certificate-authority-data: $(base64 -w0 "${PKI}/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $(base64 -w0 "${PKI}/$2.crt")
    client-key-data: $(base64 -w0 "${PKI}/$2.key")
contexts:
- name: palisade-e2e
  context:
    cluster: palisade-e2e
    user: $2
current-context: palisade-e2e
EOF
}
write_kubeconfig "${KUBECONFIG_PATH}" admin
for c in kube-controller-manager kube-scheduler kwok; do
  write_kubeconfig "${CONF}/${c}.kubeconfig" "${c}"
done

# Pods go to the simulated (kwok) nodes unless their namespace is annotated
# scheduler.alpha.kubernetes.io/node-selector=palisade.dev/node=real (node.sh).
cat >"${CONF}/pod-node-selector.yaml" <<EOF
podNodeSelectorPluginConfig:
  clusterDefaultNodeSelector: palisade.dev/node=simulated
EOF
cat >"${CONF}/admission.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodNodeSelector
  path: ${CONF}/pod-node-selector.yaml
EOF
if [[ "${NODE_ENABLED}" == 1 ]]; then
  # With a real node, no pod is privileged or on the host's network unless its namespace says
  # so (a privileged pod could enter the machine's own network namespace).
  cat >>"${CONF}/admission.yaml" <<EOF
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults: {enforce: baseline, enforce-version: latest}
EOF
fi
cat >"${CONF}/kube-scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: ${CONF}/kube-scheduler.kubeconfig
  qps: ${API_QPS}
  burst: ${API_BURST}
leaderElection:
  leaderElect: true
EOF

# --- processes --------------------------------------------------------------
LAUNCH=()
command -v setsid >/dev/null 2>&1 && LAUNCH=(setsid) # detach from the terminal

start() { # <component> <args...>
  start_binary "$1" "${BIN_DIR}/$1" "${@:2}"
}

# Starts component $1 running binary $2, logging to its log and recording its pid. A caller may
# set LAUNCH_PREFIX (a command to run it under, e.g. nsenter) and LAUNCH_UMASK (node.sh).
start_binary() { # <component> <binary> <args...>
  local c="$1" bin="$2" pid deadline=$((SECONDS + 30))
  shift 2
  (
    [[ -z "${LAUNCH_UMASK:-}" ]] || umask "${LAUNCH_UMASK}"
    exec "${LAUNCH[@]}" ${LAUNCH_PREFIX[@]+"${LAUNCH_PREFIX[@]}"} "${bin}" "$@"
  ) </dev/null >>"${LOG_DIR}/${c}.log" 2>&1 &
  pid=$!
  echo "${pid}" >"${PID_DIR}/${c}.pid"
  started=1
  # Wait for the exec, so component_pid recognises the process.
  until component_pid "${c}" >/dev/null; do
    pid_alive "${pid}" || fail "${c}" "${c} exited right after start"
    ((SECONDS < deadline)) || fail "${c}" "${c} (pid ${pid}) did not exec ${bin}"
    sleep 0.05
  done
}

# Polls a command until it succeeds; fails early if the component died.
wait_for() { # <component> <description> <command...>
  local c="$1" what="$2" deadline=$((SECONDS + TIMEOUT))
  shift 2
  until "$@" >/dev/null 2>&1; do
    component_pid "${c}" >/dev/null || fail "${c}" "${c} exited while waiting for ${what}"
    ((SECONDS < deadline)) || fail "${c}" "timed out after ${TIMEOUT}s waiting for ${what}"
    sleep 0.2
  done
}

say "starting etcd ${ETCD_VERSION} on 127.0.0.1:${ETCD_PORT}"
start etcd \
  --name=palisade-e2e \
  --data-dir="${STATE_DIR}/etcd" \
  --listen-client-urls="http://127.0.0.1:${ETCD_PORT}" \
  --advertise-client-urls="http://127.0.0.1:${ETCD_PORT}" \
  --listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-cluster="palisade-e2e=http://127.0.0.1:${ETCD_PEER_PORT}" \
  --initial-cluster-state=new \
  --unsafe-no-fsync \
  --log-level=warn
wait_for etcd "etcd to listen on 127.0.0.1:${ETCD_PORT}" port_open "${ETCD_PORT}"

say "starting kube-apiserver ${K8S_VERSION} on ${API_URL}"
start kube-apiserver \
  --bind-address=127.0.0.1 \
  --advertise-address="${ADVERTISE_ADDRESS}" \
  --secure-port="${APISERVER_PORT}" \
  --cert-dir="${STATE_DIR}/kube-apiserver-certs" \
  --etcd-servers="http://127.0.0.1:${ETCD_PORT}" \
  --tls-cert-file="${PKI}/apiserver.crt" \
  --tls-private-key-file="${PKI}/apiserver.key" \
  --client-ca-file="${PKI}/ca.crt" \
  --service-account-issuer="${SA_ISSUER}" \
  --service-account-key-file="${PKI}/sa.pub" \
  --service-account-signing-key-file="${PKI}/sa.key" \
  --service-cluster-ip-range="${SERVICE_CIDR}" \
  --requestheader-client-ca-file="${PKI}/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-username-headers=X-Remote-User \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --proxy-client-cert-file="${PKI}/front-proxy-client.crt" \
  --proxy-client-key-file="${PKI}/front-proxy-client.key" \
  --authorization-mode=Node,RBAC \
  --enable-admission-plugins=NamespaceLifecycle,ServiceAccount,PodSecurity,RuntimeClass,NodeRestriction,OwnerReferencesPermissionEnforcement,PodNodeSelector \
  --admission-control-config-file="${CONF}/admission.yaml" \
  --kubelet-preferred-address-types=InternalIP \
  --enable-aggregator-routing=true \
  --kubelet-certificate-authority="${PKI}/ca.crt" \
  --kubelet-client-certificate="${PKI}/apiserver-kubelet-client.crt" \
  --kubelet-client-key="${PKI}/apiserver-kubelet-client.key" \
  --allow-privileged=true \
  --v="${VERBOSITY}"
wait_for kube-apiserver "kube-apiserver /readyz" "${KUBECTL[@]}" get --raw /readyz

say "starting kube-controller-manager and kube-scheduler"
start kube-controller-manager \
  --kubeconfig="${CONF}/kube-controller-manager.kubeconfig" \
  --authentication-kubeconfig="${CONF}/kube-controller-manager.kubeconfig" \
  --authorization-kubeconfig="${CONF}/kube-controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="${KCM_PORT}" \
  --cert-dir="${STATE_DIR}/kube-controller-manager-certs" \
  --cluster-name=palisade-e2e \
  --service-account-private-key-file="${PKI}/sa.key" \
  --root-ca-file="${PKI}/ca.crt" \
  --cluster-signing-cert-file="${PKI}/ca.crt" \
  --cluster-signing-key-file="${PKI}/ca.key" \
  --use-service-account-credentials=true \
  --kube-api-qps="${API_QPS}" \
  --kube-api-burst="${API_BURST}" \
  --v="${VERBOSITY}"
start kube-scheduler \
  --config="${CONF}/kube-scheduler.yaml" \
  --authentication-kubeconfig="${CONF}/kube-scheduler.kubeconfig" \
  --authorization-kubeconfig="${CONF}/kube-scheduler.kubeconfig" \
  --bind-address=127.0.0.1 \
  --secure-port="${SCHEDULER_PORT}" \
  --cert-dir="${STATE_DIR}/kube-scheduler-certs" \
  --v="${VERBOSITY}"

say "creating fake nodes"
create_nodes() {
  "${KUBECTL[@]}" apply -f "${CLUSTER_DIR}/nodes.yaml" -o name >"${CONF}/nodes" 2>"${CONF}/nodes.err"
}
wait_for kube-apiserver "creating the nodes of ${CLUSTER_DIR}/nodes.yaml (errors: ${CONF}/nodes.err)" create_nodes
mapfile -t NODES <"${CONF}/nodes"
[[ ${#NODES[@]} -gt 0 ]] || fail "" "no nodes in ${CLUSTER_DIR}/nodes.yaml"

say "starting kwok ${KWOK_VERSION} for ${NODES[*]#node/}"
kwok_configs=("--config=${CLUSTER_DIR}/kwok/kwok.yaml")
for f in "${CLUSTER_DIR}"/kwok/stages/*.yaml; do
  kwok_configs+=("--config=${f}")
done
HOME="${STATE_DIR}/kwok-home" start kwok \
  "${kwok_configs[@]}" \
  --kubeconfig="${CONF}/kwok.kubeconfig" \
  --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
  --server-address="127.0.0.1:${KWOK_PORT}"

# Counts fake nodes whose Ready condition and taints match; admission puts a
# not-ready taint on new nodes, the node lifecycle controller removes it.
nodes_match() { # <jsonpath item> <wanted line>
  local out
  out="$("${KUBECTL[@]}" get "${NODES[@]}" -o "jsonpath={range .items[*]}|$1{\"\\n\"}{end}")"
  [[ "$(grep -cxF -- "|$2" <<<"${out}")" -eq ${#NODES[@]} ]]
}
wait_for kwok "nodes ${NODES[*]#node/} to be Ready" \
  nodes_match '{.status.conditions[?(@.type=="Ready")].status}' True
wait_for kube-controller-manager "nodes ${NODES[*]#node/} to lose their not-ready taints" \
  nodes_match '{.spec.taints}' ''
wait_for kube-controller-manager "ServiceAccount default/default (service-account controller)" \
  "${KUBECTL[@]}" -n default get serviceaccount default
wait_for kube-controller-manager "ConfigMap default/kube-root-ca.crt (root CA publisher)" \
  "${KUBECTL[@]}" -n default get configmap kube-root-ca.crt
wait_for kube-scheduler "kube-scheduler to take its leader lease" \
  "${KUBECTL[@]}" -n kube-system get lease kube-scheduler

if [[ "${NODE_ENABLED}" == 1 ]]; then
  COMPONENTS+=("${NODE_COMPONENTS[@]}")
  node_up
  node_kubernetes
  node_network_check
fi

for c in "${COMPONENTS[@]}"; do
  component_pid "${c}" >/dev/null || fail "${c}" "${c} exited"
done

cat >"${STATE_DIR}/env" <<EOF
# source this file to use the e2e cluster from a shell
export KUBECONFIG='${KUBECONFIG_PATH}'
export PATH='${BIN_DIR}':"\${PATH}"
EOF
chmod 644 "${STATE_DIR}/env"

say "cluster up in $(elapsed)s"
say "  kubeconfig: ${KUBECONFIG_PATH}"
say "  binaries:   ${BIN_DIR}"
say "  logs:       ${LOG_DIR}"
say "  try:        source ${STATE_DIR}/env && kubectl get nodes"
