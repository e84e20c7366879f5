#!/usr/bin/env bash
# Runs the end-to-end suite. With E2E_KUBECONFIG set, against that cluster; otherwise against a
# local control plane (e2e/cluster) started for the run and stopped afterwards, also on failure.
# The suite fails, never skips, when the cluster cannot be reached or started.
set -euo pipefail
cd "$(dirname "$0")/.."

# Build first, so the cluster is not kept waiting on the compiler.
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
fi

cargo test -p palisade-e2e -- --test-threads "${E2E_THREADS:-4}" "$@"
