#!/usr/bin/env bash
# Stops the e2e cluster started by up.sh (by its recorded pids: SIGTERM, then
# SIGKILL after PALISADE_E2E_STOP_GRACE seconds) and deletes its state
# directory. Never touches the binary cache. Safe to run when nothing runs.
# Usage: e2e/cluster/down.sh
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ $# -gt 0 ]]; then
  sed -n '2,5p' "${BASH_SOURCE[0]}"
  [[ "$1" == "-h" || "$1" == "--help" ]] && exit 0
  exit 2
fi

# shellcheck source=SCRIPTDIR/node.sh
source "${CLUSTER_DIR}/node.sh"
if [[ ! -e "${STATE_DIR}" ]]; then
  # A real node's namespaces and host rules may outlive a removed state directory.
  node_network_down
  echo "down.sh: nothing to do (${STATE_DIR} does not exist)"
  exit 0
fi
COMPONENTS+=("${NODE_COMPONENTS[@]}")
stop_components
# Only a node of this state directory (node_down also leaves another one's node alone).
if node_is_ours; then
  node_down
fi
remove_state
echo "down.sh: removed ${STATE_DIR}"
