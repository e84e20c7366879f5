#!/usr/bin/env bash
# Runs the end-to-end suite. With E2E_KUBECONFIG set, against that cluster; otherwise against a
# local control plane (e2e/cluster) started for the run and stopped afterwards, also on failure.
# The suite fails, never skips, when the cluster cannot be reached or started.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build first, so the cluster is not kept waiting on the compiler.
cargo build -p palisade
cargo test -p palisade-e2e --no-run

if [[ -n "${E2E_KUBECONFIG:-}" ]]; then
  echo "e2e: using the cluster in ${E2E_KUBECONFIG}"
  export KUBECONFIG="${E2E_KUBECONFIG}"
else
  started=$(date +%s)
  e2e/cluster/up.sh
  trap 'e2e/cluster/down.sh' EXIT
  echo "e2e: local control plane up in $(( $(date +%s) - started )) s"
  export KUBECONFIG="${PALISADE_E2E_STATE:-$PWD/target/e2e}/kubeconfig"
  # shellcheck disable=SC1091
  source "${PALISADE_E2E_STATE:-$PWD/target/e2e}/env"   # kubectl of the local control plane
fi

# The operator refuses to start without its CRDs.
kubectl apply --server-side --force-conflicts -f crds/
kubectl wait --for=condition=Established --timeout=60s crd/agentpolicies.palisade.dev crd/agentsandboxes.palisade.dev

# The operator runs beside the suite; its log is checked for panics afterwards.
state="${PALISADE_E2E_STATE:-$PWD/target/e2e}"
mkdir -p "$state"
operator_log="$state/operator.log"
target/debug/palisade run --metrics-addr 127.0.0.1:18080 >"$operator_log" 2>&1 &
operator_pid=$!
stop_operator() { kill "$operator_pid" 2>/dev/null && wait "$operator_pid" 2>/dev/null || true; }
if [[ -n "${E2E_KUBECONFIG:-}" ]]; then trap stop_operator EXIT; else trap 'stop_operator; e2e/cluster/down.sh' EXIT; fi

status=0
cargo test -p palisade-e2e --test admission --test operator -- --test-threads "${E2E_THREADS:-8}" "$@" || status=$?
stop_operator
if grep -n "panicked" "$operator_log"; then
  echo "e2e: the operator panicked (log: $operator_log)"
  status=1
fi
if ((status != 0)); then
  echo "e2e: last lines of the operator log:"
  tail -n 40 "$operator_log"
fi

# Phase 2: tests that start their own operators (leader election, kill and restart), with the
# shared one stopped.
echo "e2e: phase 2 (tests/ha.rs, own operators)"
PALISADE_BIN="$PWD/target/debug/palisade" cargo test -p palisade-e2e --test ha || status=$?
exit "$status"
