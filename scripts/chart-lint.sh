#!/usr/bin/env bash
# helm lint --strict of charts/palisade with its default values and with every optional feature
# on, and a check that values.schema.json refuses values of the wrong type.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=../e2e/cluster/lib.sh
source e2e/cluster/lib.sh
e2e/cluster/build.sh >/dev/null
helm="${BIN_DIR}/helm"
chart=charts/palisade

all_features=(
  --set watchNamespace=agents
  --set metrics.serviceMonitor.enabled=true
  --set metrics.prometheusRule.enabled=true
  --set grafanaDashboard.enabled=true
  --set runtimeClasses.gvisor.create=true
  --set runtimeClasses.kata.create=true
  --set runtimeClasses.gvisor.seccompApplied=true
  --set "cluster.cidrs={10.244.0.0/16,10.96.0.0/12}"
  --set "cluster.nodeCidrs={192.168.0.0/24}"
  --set "sandboxPods.labelAllow={team,example.com/*}"
  --set "sandboxPods.annotationAllow={example.com/owner}"
  --set "sandboxPods.isolationCheck.image=registry.example/palisade:0.1.0"
  --set "sandboxPods.isolationCheck.mode=transition"
  --set "admissionPolicy.runtimeClassNames={gvisor-custom,kata-*}"
  --set "networkPolicy.apiServer.cidrs={192.0.2.10/32}"
  --set "cluster.apiAudiences={https://oidc.example.com/id/ABC}"
  --set "gateway.dnsServers={192.0.2.53:53,[2001:db8::53]:5353}"
  --set gateway.credentialKey.existingSecret=gateway-key
  --set gateway.replicas=3
  --set gateway.fqdnBackend=gateway
)
"$helm" lint --strict "$chart"
"$helm" lint --strict "$chart" "${all_features[@]}"
"$helm" lint --strict "$chart" --set replicas=1,leaderElection.enabled=false
"$helm" lint --strict "$chart" --set sandboxPods.isolationCheck.enabled=false
"$helm" lint --strict "$chart" --set gateway.enabled=false,gateway.replicas=1

# Values the schema or the templates must refuse.
refused=(
  "replicas=two"
  "image.pullPolicy=Sometimes"
  "runtimeClasses.gvisor.nmae=gvisor"
  "metrics.port=0"
  "logFormat=xml"
  "image.digest=latest"
  "replicas=2,leaderElection.enabled=false"
  "metrics.prometheusRule.enabled=true"
  "podLabels.app\\.kubernetes\\.io/name=other"
  "sandboxPods.annotationAllow={k8s.v1.cni.cncf.io/networks}"
  "sandboxPods.labelAllow={app.kubernetes.io/*}"
  "sandboxPods.isolationCheck.enabled=maybe"
  "sandboxPods.isolationCheck.image=a b"
  "sandboxPods.isolationCheck.mode=sometimes"
  "admissionPolicy.runtimeClassNames={gvisor')||true||('}"
  "fullnameOverride=a-name-that-is-far-too-long-for-a-service-with-the-metrics-suffix"
  "gateway.fqdnBackend=istio"
  "gateway.port=0"
  "gateway.replicas=0"
  "gateway.dnsServers={dns.example.com:53}"
  "gateway.credentialKey.existingSecret=Bad_Name"
)
for values in "${refused[@]}"; do
  if "$helm" template palisade "$chart" --set "$values" >/dev/null 2>&1; then
    echo "chart-lint: --set $values was accepted" >&2
    exit 1
  fi
done
# The alerts query only metrics the operator exports (docs/metrics.md lists exactly those; a
# Rust test, controller/tests/dashboard.rs, keeps that list true).
documented="$(grep -oE '^\| `palisade_[a-z_]+`' docs/metrics.md | grep -oE 'palisade_[a-z_]+' | sort -u)"
used="$("$helm" template palisade "$chart" "${all_features[@]}" --show-only templates/prometheusrule.yaml |
  grep -oE 'palisade_[a-z_]+\{' | tr -d '{' | sort -u)"
unknown="$(comm -23 <(echo "$used") <(echo "$documented"))"
if [[ -n "$unknown" ]]; then
  echo "chart-lint: the PrometheusRule queries metrics the operator does not export: $unknown" >&2
  exit 1
fi
echo "chart-lint: the chart lints clean, refuses ${#refused[@]} bad values, and its alerts use $(wc -l <<<"$used") exported metrics"
