#!/usr/bin/env bash
# make demo: run Palisade end to end. Without KUBECONFIG, on the local control plane with its
# real node (started here, built from the Go module proxy on first use; as root), where the
# examples' agents run for real under gVisor with their NetworkPolicies enforced; with
# KUBECONFIG, on that cluster. Installs the CRDs (and, locally, the example RuntimeClasses, a
# volume for the workspace claim, the demo agent images and the coder's Secret), runs the
# operator, applies examples/, and shows the sandboxes and what their agents printed.
# `make demo-down` stops what it started.
set -euo pipefail
cd "$(dirname "$0")/.."
state=target/demo
mkdir -p "$state"

cargo build -q -p palisade
if [[ -z "${KUBECONFIG:-}" ]]; then
  running=0
  if [[ -f target/e2e/env ]]; then
    # shellcheck disable=SC1091
    source target/e2e/env
    kubectl get --raw /readyz >/dev/null 2>&1 && running=1
  fi
  if ((!running)); then
    e2e/cluster/up.sh
    # shellcheck disable=SC1091
    source target/e2e/env
  fi
  local_cluster=1
else
  echo "demo: using the cluster in KUBECONFIG=${KUBECONFIG}"
  local_cluster=0
fi
# The local cluster's real node (PALISADE_E2E_NODE, on by default).
node=0
((local_cluster)) && kubectl get node palisade-node >/dev/null 2>&1 && node=1

kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/agentpolicies.palisade.dev crd/agentsandboxes.palisade.dev >/dev/null

# Where the examples go: on the local cluster, a namespace on the real node (when it runs) and,
# for the Kata example (Kata needs a guest kernel and image this machine lacks), one on the
# simulated nodes.
ns=default
kata_ns=default
operator_args=()
if ((local_cluster)); then
  kubectl apply -f examples/runtimeclasses.yaml >/dev/null
  mkdir -p "$state/workspace"
  chmod 1777 "$state/workspace"
  # (by its real path: gVisor refuses a bind mount through a symbolic link, and target/ may be one)
  kubectl apply -f - >/dev/null <<YAML
apiVersion: v1
kind: PersistentVolume
metadata:
  name: palisade-demo-workspace
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath: {path: $(realpath "$state/workspace")}
YAML
  # Released by an earlier run's claim (the coder sandbox deleted): free for the next one.
  if [[ "$(kubectl get pv palisade-demo-workspace -o jsonpath='{.status.phase}')" == Released ]]; then
    kubectl patch pv palisade-demo-workspace --type=json \
      -p '[{"op": "remove", "path": "/spec/claimRef"}]' >/dev/null
  fi
  if ((node)); then
    ns=palisade-demo
    kata_ns=palisade-demo-simulated
    kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    kubectl annotate --overwrite namespace "$ns" \
      scheduler.alpha.kubernetes.io/node-selector=palisade.dev/node=real >/dev/null
    kubectl create namespace "$kata_ns" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    # The examples' images, built here: the demo agent (e2e/cluster/probe) under the name each
    # example runs, trying what e2e/cluster/node/demo/<agent>.checks lists.
    (
      # shellcheck source=../e2e/cluster/lib.sh
      source e2e/cluster/lib.sh
      # shellcheck source=../e2e/cluster/node.sh
      source e2e/cluster/node.sh
      LOG_DIR="${STATE_DIR}/logs"
      IMAGE_AS=python IMAGE_CHECKS=e2e/cluster/node/demo/analyst.checks \
        node_image palisade-dev/examples/analyst:0.1.0 "${BIN_DIR}/probe" /usr/local/bin/python
      IMAGE_AS=coder IMAGE_CHECKS=e2e/cluster/node/demo/coder.checks \
        node_image palisade-dev/examples/coder:0.1.0 "${BIN_DIR}/probe" /usr/local/bin/coder
    )
    # The sandboxes' isolation check runs the operator's image (by default of this version).
    e2e/cluster/operator-image.sh target/debug/palisade \
      "ghcr.io/palisade-dev/palisade:$(sed -n 's/^version = "\(.*\)"/\1/p' controller/Cargo.toml | head -1)"
    echo "demo: pushed the demo agent images to the node's registry (ghcr.io/palisade-dev/examples/{analyst,coder}:0.1.0)"
    # The one Secret the coding-agent policy lets its sandboxes read.
    kubectl -n "$ns" create secret generic coder-credentials --from-literal=token=demo-token \
      --dry-run=client -o yaml | kubectl apply -f - >/dev/null
    # The cluster's ranges, so no CIDR allow reaches into the cluster or the node.
    operator_args=(--cluster-cidr=10.244.0.0/14,10.96.0.0/16 --node-cidr=10.250.0.0/16
      --isolation-check-mode=transition)
  fi
fi

if [[ -f "$state/operator.pid" ]] && kill -0 "$(cat "$state/operator.pid")" 2>/dev/null; then
  echo "demo: the operator is already running (pid $(cat "$state/operator.pid"))"
else
  target/debug/palisade run --metrics-addr 127.0.0.1:18081 "${operator_args[@]}" >"$state/operator.log" 2>&1 &
  echo $! >"$state/operator.pid"
  echo "demo: operator started (pid $!, log $state/operator.log, metrics http://127.0.0.1:18081/metrics)"
fi

kubectl -n "$ns" apply -f examples/no-network.yaml -f examples/coding-agent.yaml
kubectl -n "$kata_ns" apply -f examples/kata-agent.yaml
echo "demo: waiting for the sandboxes to settle..."
for _ in $(seq 1 120); do
  phases=$(kubectl get agentsandboxes -A -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}')
  if [[ -n "$phases" ]] && ! grep -qE '^(|Pending|Starting)$' <<<"$phases"; then break; fi
  sleep 1
done
kubectl get agentsandboxes,agentpolicies -A
echo
if ((node)); then
  for sandbox in offline-analyst coder; do
    pod="$(kubectl -n "$ns" get agentsandbox "$sandbox" -o jsonpath='{.status.podName}')"
    for _ in $(seq 1 60); do
      [[ -n "$pod" ]] && kubectl -n "$ns" logs "$pod" -c agent 2>/dev/null | grep -q "demo agent done" && break
      sleep 1
      pod="$(kubectl -n "$ns" get agentsandbox "$sandbox" -o jsonpath='{.status.podName}')"
    done
    echo "--- kubectl -n $ns logs $pod -c agent   (sandbox $sandbox, on the real node)"
    kubectl -n "$ns" logs "$pod" -c agent 2>/dev/null || echo "(no log yet: kubectl -n $ns describe agentsandbox $sandbox)"
    echo
  done
  echo "The Kata example (browser, namespace $kata_ns) runs on a simulated node: Kata needs a guest"
  echo "kernel and image this machine does not have, so its pod only moves through its phases."
  echo
fi
echo "Try: kubectl -n $ns describe agentsandbox coder; kubectl -n $ns get networkpolicy,pods -o wide; make demo-down"
