#!/usr/bin/env bash
# Runs the end-to-end suite. With E2E_KUBECONFIG set, against that cluster; otherwise against a
# local control plane (e2e/cluster) started for the run and stopped afterwards, also on failure.
# The suite fails, never skips, when the cluster cannot be reached or started.
#
# The operator is installed the way users install it: the Helm chart (charts/palisade) into
# namespace palisade-system. Its pods cannot run here (the nodes are simulated), so the operator
# runs beside the suite as a process holding the chart ServiceAccount's token: every scenario
# passes under the chart's RBAC, and the operator's log is checked for refused requests. At the
# end the release is uninstalled and the plain manifests (kubectl apply -k config/default) are
# installed and removed.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build first, so the cluster is not kept waiting on the compiler. The operator under test is
# the release binary the container image ships (make build).
make --no-print-directory build
cargo test -p palisade-e2e --no-run
# kstatus (the library Flux and kubectl judge health with) and Argo CD's Lua, for tests/gitops.rs.
KSTATUS_BIN="$(e2e/cluster/tools/kstatus/build.sh)"
export KSTATUS_BIN
operator_bin="$PWD/target/release/palisade"
# up.sh creates the state directory; it refuses one it did not create.
state="${PALISADE_E2E_STATE:-$PWD/target/e2e}"

cleanup=()
on_exit() {
  status=$?
  for ((i = ${#cleanup[@]} - 1; i >= 0; i--)); do eval "${cleanup[i]}" || true; done
}
# On failure, before the local cluster (and its logs) is removed: what CI needs to tell why.
diagnose() {
  ((status != 0)) || return 0
  echo "e2e: failed (status ${status}); the cluster as it was:" >&2
  kubectl --request-timeout=10s get pods -A -o wide 2>&1 | grep -v -E ' (Running|Completed) ' | head -40 >&2 || true
  kubectl --request-timeout=10s get events -A --field-selector type=Warning 2>&1 | tail -30 >&2 || true
  local f
  for f in "$state"/logs/kubelet.log "$state"/logs/containerd.log "$state"/logs/kube-router.log; do
    [[ -f "$f" ]] || continue
    echo "--- errors in ${f#"$state"/} (last 20)" >&2
    grep -E '^E[0-9]{4}|level=error' "$f" | tail -20 >&2 || true
  done
  if [[ -d "$state/logs/runsc" ]]; then
    echo "--- gVisor's fatal errors (distinct, up to 10)" >&2
    grep -rh 'FATAL ERROR' "$state/logs/runsc" 2>/dev/null | sed 's/^.*FATAL ERROR: //' |
      sort | uniq -c | sort -rn | head -10 >&2 || true
  fi
}
trap on_exit EXIT

if [[ -n "${E2E_KUBECONFIG:-}" ]]; then
  echo "e2e: using the cluster in ${E2E_KUBECONFIG}"
  export KUBECONFIG="${E2E_KUBECONFIG}"
  mkdir -p "$state"
  # kubectl and helm: the local control plane's when built, else the ones on PATH.
  # shellcheck source=cluster/lib.sh
  source e2e/cluster/lib.sh
  [[ -d "${BIN_DIR}" ]] && PATH="${BIN_DIR}:${PATH}"
else
  started=$(date +%s)
  e2e/cluster/up.sh
  cleanup+=("e2e/cluster/down.sh" "diagnose")
  echo "e2e: local control plane up in $(( $(date +%s) - started )) s"
  export KUBECONFIG="$state/kubeconfig"
  # shellcheck disable=SC1091
  source "$state/env"   # kubectl and helm of the local control plane
fi

release=palisade
release_ns=palisade-system
# The chart's Role lets its ServiceAccount renew only the release's Lease (named after it).
export E2E_RELEASE="$release" E2E_RELEASE_NAMESPACE="$release_ns"
export E2E_LEASE_NAMESPACE="$release_ns" E2E_LEASE_NAME="$release"

# Helm installs the chart's CRDs only when they are absent; on a reused cluster they are applied
# first, as the upgrade notes say.
if [[ -n "${E2E_KUBECONFIG:-}" ]]; then
  kubectl apply --server-side --force-conflicts -f charts/palisade/crds/
  kubectl delete --ignore-not-found -f config/default/palisade.yaml >/dev/null
fi
# The real node (PALISADE_E2E_NODE, on by default) runs the isolation suite; on a cluster of
# one's own (E2E_KUBECONFIG) there is none.
node=0
if [[ -z "${E2E_KUBECONFIG:-}" ]]; then
  # shellcheck source=cluster/lib.sh
  node="$(source e2e/cluster/lib.sh && echo "${NODE_ENABLED}")"
fi
node_values=()
if ((node)); then
  # The cluster's ranges, as an admin states them: pods (the node's and the fake nodes'),
  # Services, and the node's links, so no CIDR allow reaches into the cluster.
  node_values=(--set "cluster.cidrs={10.244.0.0/14,10.96.0.0/16}" --set "cluster.nodeCidrs={10.250.0.0/16}")
  # kube-router programs a pod after it starts: the isolation check can require the transition.
  node_values+=(--set sandboxPods.isolationCheck.mode=transition)
  # The egress gateway runs for real on the node (tests/gateway.rs), the operator's pods stay
  # on the simulated nodes (the operator under test runs beside the suite). The release
  # namespace lifts the cluster's default node selector so that each Deployment picks its own.
  # The gateway reaches the API server through its forwarder, on port 16443.
  node_values+=(--set "gateway.nodeSelector.palisade\.dev/node=real"
    --set "nodeSelector.palisade\.dev/node=simulated"
    --set "networkPolicy.apiServer.ports={443,16443}")
  kubectl create namespace "$release_ns" --dry-run=client -o yaml |
    kubectl annotate -f - --local -o yaml "scheduler.alpha.kubernetes.io/node-selector=" |
    kubectl apply -f - >/dev/null
else
  echo "e2e: no real node (PALISADE_E2E_NODE=0 or E2E_KUBECONFIG): the isolation suite (tests/isolation.rs) does not run"
fi
echo "e2e: helm install $release charts/palisade -n $release_ns"
# The suite's sandboxes use RuntimeClasses of unique names (gvisor-late-..., gvisor-tolerating-...).
# With the real node, the gateway's pods pull the operator's image, pushed below: the rollout
# is awaited after that.
wait_flags=(--wait --timeout 3m)
((node)) && wait_flags=()
helm upgrade --install "$release" charts/palisade --namespace "$release_ns" --create-namespace \
  --set "admissionPolicy.runtimeClassNames={gvisor-*,kata-*}" "${node_values[@]}" "${wait_flags[@]}"
kubectl wait --for=condition=Established --timeout=60s crd/agentpolicies.palisade.dev crd/agentsandboxes.palisade.dev crd/agentsandboxpools.palisade.dev

# Credentials of the chart's ServiceAccount, for every operator the suite runs.
operator_kubeconfig="$state/operator.kubeconfig"
token="$(kubectl -n "$release_ns" create token "$release" --duration=3h)"
server="$(kubectl config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
ca="$(kubectl config view --raw --minify --flatten -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')"
umask 077
cat >"$operator_kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "${server}", certificate-authority-data: "${ca}"}
users:
- name: ${release_ns}/${release}
  user: {token: "${token}"}
contexts:
- name: operator
  context: {cluster: e2e, user: "${release_ns}/${release}"}
current-context: operator
YAML
umask 022
export E2E_OPERATOR_KUBECONFIG="$operator_kubeconfig"
echo "e2e: operators run as system:serviceaccount:${release_ns}:${release}"

# Phase 1: the shared operator beside the admission, operator, RBAC and GitOps suites, started
# with the arguments of the installed Deployment (only the metrics address is local), so a flag
# the chart passes and the binary does not know fails here.
mapfile -t chart_args < <(kubectl -n "$release_ns" get deployment "$release" -o json | python3 -c '
import json, sys
container = json.load(sys.stdin)["spec"]["template"]["spec"]["containers"][0]
for arg in container.get("command", [])[1:] + container["args"]:
    if not arg.startswith("--metrics-addr"):
        print(arg)')
# The gateway credential key the chart mounts into the operator's pod, for the operator run here.
gateway_key="$state/gateway-key"
for i in "${!chart_args[@]}"; do
  if [[ "${chart_args[$i]}" == --gateway-key-file=* ]]; then
    secret="$(kubectl -n "$release_ns" get deployment "$release" -o json | python3 -c '
import json, sys
for v in json.load(sys.stdin)["spec"]["template"]["spec"].get("volumes", []):
    if v["name"] == "gateway-key":
        print(v["secret"]["secretName"])')"
    (umask 077 && kubectl -n "$release_ns" get secret "$secret" -o jsonpath='{.data.key}' | base64 -d >"$gateway_key")
    chart_args[$i]="--gateway-key-file=$gateway_key"
  fi
done
echo "e2e: palisade ${chart_args[*]}"
if ((node)); then
  # Sandbox pods on the real node start with the isolation check, which runs the operator's
  # image: the binary under test, under the name the chart gives it.
  check_image="$(printf '%s\n' "${chart_args[@]}" | sed -n 's/^--isolation-check-image=//p')"
  if [[ -z "$check_image" ]]; then
    echo "e2e: the chart passes no --isolation-check-image" >&2
    exit 1
  fi
  e2e/cluster/operator-image.sh "$operator_bin" "$check_image"
  kubectl -n "$release_ns" rollout status deployment/"$release" --timeout=3m
  kubectl -n "$release_ns" rollout status deployment/"$release"-gateway --timeout=3m
fi
operator_log="$state/operator.log"
KUBECONFIG="$operator_kubeconfig" POD_NAME=e2e-shared-operator \
  "$operator_bin" "${chart_args[@]}" --metrics-addr 127.0.0.1:18080 >"$operator_log" 2>&1 &
operator_pid=$!
stop_operator() { kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null || true; }
cleanup+=("stop_operator")

status=0
# The gateway suite first, on its own: tests/backends.rs installs stand-ins of Cilium's CRDs,
# after which the operator (--fqdn-backend=auto) compiles domain names for Cilium, not the
# gateway.
if ((node)); then
  cargo test -p palisade-e2e --test gateway -- "$@" || status=$?
fi
suites=(--test admission --test operator --test pools --test hardening --test rbac --test gitops --test backends)
((node)) && suites+=(--test isolation)
cargo test -p palisade-e2e --no-fail-fast "${suites[@]}" \
  -- --test-threads "${E2E_THREADS:-8}" "$@" || status=$?
stop_operator
if ((status != 0)); then
  echo "e2e: last lines of the operator log:"
  tail -n 40 "$operator_log"
fi

# Phase 2: tests that start their own operators (leader election, kill and restart), with the
# shared one stopped.
echo "e2e: phase 2 (tests/ha.rs, own operators)"
# One at a time: under the chart's RBAC they share the release's Lease.
PALISADE_BIN="$operator_bin" cargo test -p palisade-e2e --test ha -- --test-threads 1 --nocapture || status=$?
if ((node)); then
  # gVisor applying the pod's seccomp profile (runsc --oci-seccomp) needs an operator told so.
  echo "e2e: phase 3 (tests/isolation_oci_seccomp.rs, an operator mapping gvisor to gvisor-seccomp)"
  PALISADE_BIN="$operator_bin" cargo test -p palisade-e2e --test isolation_oci_seccomp -- --test-threads 1 --nocapture || status=$?
fi

# Every operator log: no panic, and no request the chart's RBAC refused.
for log in "$operator_log" "$state"/operators/*.log; do
  [[ -f "$log" ]] || continue
  if grep -n "panicked" "$log"; then
    echo "e2e: an operator panicked (log: $log)"
    status=1
  fi
  # RBAC denials read: ... is forbidden: User "system:serviceaccount:NS:NAME" cannot VERB ...
  # (other 403s, such as creating in a namespace being deleted, are not about permissions).
  if grep -n -E 'forbidden: User \\?"system:serviceaccount:' "$log"; then
    echo "e2e: the chart's RBAC refused an operator request (log: $log)"
    status=1
  fi
done

# The other install paths: helm uninstall, then the plain manifests.
echo "e2e: helm uninstall, then kubectl apply -k config/default"
helm uninstall "$release" --namespace "$release_ns" --wait --timeout 2m
if kubectl get clusterrole "$release" >/dev/null 2>&1; then
  echo "e2e: helm uninstall left ClusterRole $release behind"
  status=1
fi
kubectl get crd agentsandboxes.palisade.dev >/dev/null # CRDs stay with their objects
# The plain manifests' operator must stay on the simulated nodes: the cluster's default again.
if ((node)); then
  kubectl annotate namespace "$release_ns" --overwrite \
    "scheduler.alpha.kubernetes.io/node-selector=palisade.dev/node=simulated" >/dev/null
fi
kubectl apply --server-side -k config/default
kubectl -n "$release_ns" rollout status deployment/palisade --timeout=120s
kubectl delete -f config/default/palisade.yaml --wait --timeout=120s >/dev/null
echo "e2e: config/default installed and removed"
exit "$status"
