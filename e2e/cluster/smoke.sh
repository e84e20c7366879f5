#!/usr/bin/env bash
# Smoke test of a running e2e cluster (start it with up.sh): PodSecurity,
# RuntimeClass admission and scheduling, kwok pod lifecycle, garbage
# collection and namespace deletion. Cleans up what it creates.
# Usage: e2e/cluster/smoke.sh
set -euo pipefail

# shellcheck source=SCRIPTDIR/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TIMEOUT="${PALISADE_E2E_TIMEOUT:-60}"
NS="palisade-smoke"
KUBECTL=("${BIN_DIR}/kubectl" --kubeconfig "${STATE_DIR}/kubeconfig")
k() { "${KUBECTL[@]}" "$@"; }

[[ -f "${STATE_DIR}/kubeconfig" ]] || {
  echo "smoke.sh: no cluster (${STATE_DIR}/kubeconfig missing); run e2e/cluster/up.sh" >&2
  exit 1
}

passed=0
failed=0
ok() {
  passed=$((passed + 1))
  echo "smoke.sh: ok   - $*"
}
not_ok() {
  failed=$((failed + 1))
  echo "smoke.sh: FAIL - $*"
}

# Polls until a command prints the wanted value (or, for "", nothing).
eventually() { # <wanted> <command...>
  local want="$1" got="" deadline=$((SECONDS + TIMEOUT))
  shift
  while ((SECONDS < deadline)); do
    got="$("$@" 2>/dev/null)" && [[ "${got}" == "${want}" ]] && return 0
    sleep 0.25
  done
  echo "smoke.sh:        wanted '${want}', last got '${got}'" >&2
  return 1
}
check() { # <description> <wanted> <command...>
  local what="$1"
  shift
  if eventually "$@"; then ok "${what}"; else not_ok "${what}"; fi
}

created_rc=0
cleanup() {
  k delete namespace "${NS}" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if [[ ${created_rc} -eq 1 ]]; then
    k delete runtimeclass gvisor --ignore-not-found >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

if k get namespace "${NS}" >/dev/null 2>&1; then
  k delete namespace "${NS}" --timeout="${TIMEOUT}s" >/dev/null
fi
if ! k get runtimeclass gvisor >/dev/null 2>&1; then
  created_rc=1
  k apply -f - >/dev/null <<'EOF'
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: gvisor
handler: runsc
scheduling:
  nodeSelector:
    palisade.dev/runtime: gvisor
EOF
fi
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: ${NS}
  labels:
    pod-security.kubernetes.io/enforce: restricted
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: sandbox
  namespace: ${NS}
EOF

# Pod spec that satisfies the "restricted" Pod Security Standard.
restricted_spec() { # <runtimeClassName>
  cat <<EOF
runtimeClassName: $1
serviceAccountName: sandbox
securityContext:
  runAsNonRoot: true
  runAsUser: 65534
  seccompProfile:
    type: RuntimeDefault
containers:
- name: main
  image: registry.k8s.io/pause:3.10
  securityContext:
    allowPrivilegeEscalation: false
    capabilities:
      drop: [ALL]
EOF
}
indent() { sed "s/^/$(printf '%*s' "$1" '')/"; }
sandbox_pod() { # <name> <runtimeClassName>
  printf 'apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n' "$1" "${NS}"
  restricted_spec "$2" | indent 2
}

pod_field() { k -n "${NS}" get pod "$1" -o "jsonpath=$2"; }

if sandbox_pod sandbox gvisor | k create -f - >/dev/null; then
  ok "restricted pod with runtimeClassName gvisor admitted"
else
  not_ok "restricted pod with runtimeClassName gvisor admitted"
fi
check "RuntimeClass admission copied the nodeSelector" gvisor \
  pod_field sandbox '{.spec.nodeSelector.palisade\.dev/runtime}'
check "pod scheduled on palisade-gvisor" palisade-gvisor pod_field sandbox '{.spec.nodeName}'
check "pod Running and Ready (kwok)" Running/True \
  pod_field sandbox '{.status.phase}/{.status.conditions[?(@.type=="Ready")].status}'
token_volumes() { pod_field sandbox '{.spec.volumes[*].name}' | tr ' ' '\n' | grep -c '^kube-api-access-'; }
check "ServiceAccount admission added the projected token volume" 1 token_volumes

k -n "${NS}" delete pod sandbox --wait=false >/dev/null
check "deleted pod goes away (kwok pod-delete stage)" "" \
  k -n "${NS}" get pod sandbox -o name --ignore-not-found

out="$(sandbox_pod ghost does-not-exist | k create -f - 2>&1)" && rc=0 || rc=$?
if [[ ${rc} -ne 0 && "${out}" == *RuntimeClass*not\ found* ]]; then
  ok "pod with a nonexistent runtimeClassName rejected"
else
  not_ok "pod with a nonexistent runtimeClassName rejected (rc=${rc}: ${out})"
fi

out="$(k -n "${NS}" run privileged --image=registry.k8s.io/pause:3.10 \
  --overrides='{"spec":{"containers":[{"name":"privileged","image":"registry.k8s.io/pause:3.10","securityContext":{"privileged":true}}]}}' 2>&1)" &&
  rc=0 || rc=$?
if [[ ${rc} -ne 0 && "${out}" == *"violates PodSecurity"* ]]; then
  ok "privileged pod rejected by PodSecurity (enforce=restricted)"
else
  not_ok "privileged pod rejected by PodSecurity (rc=${rc}: ${out})"
fi

# Deployment -> ReplicaSet -> Pods, then garbage collection.
k apply -f - >/dev/null <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: ${NS}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
$(restricted_spec gvisor | indent 6)
EOF
check "deployment pods Running" "Running Running Running" \
  k -n "${NS}" get pods -l app=web -o 'jsonpath={.items[*].status.phase}'
k -n "${NS}" delete deployment web --cascade=background >/dev/null
check "garbage collector removed the ReplicaSet and its pods" "" \
  k -n "${NS}" get replicasets,pods -l app=web -o name

sandbox_pod last gvisor | k create -f - >/dev/null
k -n "${NS}" create configmap leftover --from-literal=a=b >/dev/null
check "second pod Running" Running pod_field last '{.status.phase}'
k delete namespace "${NS}" --wait=false >/dev/null
check "namespace deletion removed its objects and the namespace" "" \
  k get namespace "${NS}" -o name --ignore-not-found

echo "smoke.sh: ${passed} passed, ${failed} failed"
[[ ${failed} -eq 0 ]]
