#!/usr/bin/env bash
# Pushes the operator binary, as an image, to the real node's registry under the name sandbox
# pods pull it by (their isolation-check init container runs it).
# Usage: e2e/cluster/operator-image.sh <binary> <repository:tag>
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=SCRIPTDIR/node.sh
source "${CLUSTER_DIR}/node.sh"

if [[ $# -ne 2 || ! -x "$1" ]]; then
  sed -n '2,4p' "${BASH_SOURCE[0]}" >&2
  exit 2
fi
# The node's containerd sends every registry to the local one, which keeps the path only.
ref="$2"
first="${ref%%/*}"
[[ "$first" == "$ref" || ! "$first" =~ [.:] && "$first" != localhost ]] || ref="${ref#*/}"
node_operator_image "$ref" "$1"
echo "operator-image.sh: pushed $1 as $2"
