#!/usr/bin/env bash
# make demo: run Palisade end to end. Without KUBECONFIG, on a local control plane (started
# here, built from the Go module proxy on first use); with KUBECONFIG, on that cluster. Installs
# the CRDs (and, locally, the example RuntimeClasses and a volume for the workspace claim), runs
# the operator, applies examples/, and shows the sandboxes once they settle.
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

kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
kubectl wait --for=condition=Established --timeout=60s crd/agentpolicies.palisade.dev crd/agentsandboxes.palisade.dev >/dev/null
if ((local_cluster)); then
  kubectl apply -f examples/runtimeclasses.yaml >/dev/null
  kubectl apply -f - >/dev/null <<'YAML'
apiVersion: v1
kind: PersistentVolume
metadata:
  name: palisade-demo-workspace
spec:
  capacity: {storage: 10Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {path: /var/lib/palisade-demo}
YAML
fi

if [[ -f "$state/operator.pid" ]] && kill -0 "$(cat "$state/operator.pid")" 2>/dev/null; then
  echo "demo: the operator is already running (pid $(cat "$state/operator.pid"))"
else
  target/debug/palisade run --metrics-addr 127.0.0.1:18081 >"$state/operator.log" 2>&1 &
  echo $! >"$state/operator.pid"
  echo "demo: operator started (pid $!, log $state/operator.log, metrics http://127.0.0.1:18081/metrics)"
fi

kubectl apply -f examples/no-network.yaml -f examples/coding-agent.yaml -f examples/kata-agent.yaml
echo "demo: waiting for the sandboxes to settle..."
for _ in $(seq 1 60); do
  phases=$(kubectl get agentsandboxes -o jsonpath='{range .items[*]}{.status.phase}{"\n"}{end}')
  if [[ -n "$phases" ]] && ! grep -qE '^(|Pending|Starting)$' <<<"$phases"; then break; fi
  sleep 1
done
kubectl get agentsandboxes,agentpolicies
echo
echo "Try: kubectl describe agentsandbox coder; kubectl get networkpolicy,pods -o wide; make demo-down"
