#!/usr/bin/env bash
# Security scans of what Palisade installs and what it creates:
#   - checkov (skips, each with its reason, in .checkov.yaml) over the Helm chart rendered with
#     its default values and with every optional feature, over everything `palisade render`
#     produces for examples/, and over the Dockerfile;
#   - kubernetes-validate --strict over every built-in kind among them, against the oldest
#     supported Kubernetes (1.33) and the newest the tool knows (1.34).
# Tools are installed by scripts/pytool.sh in virtual environments under ~/.cache/palisade/venv
# (pinned versions). Needs the release
# binary (make build) and helm (e2e/cluster/build.sh, cached).
set -euo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION=3.3.30
KUBERNETES_VALIDATE_VERSION=1.34.1
palisade="${PALISADE_BIN:-target/release/palisade}"
[[ -x "$palisade" ]] || { echo "scan.sh: $palisade is missing: make build" >&2; exit 1; }

# shellcheck source=../e2e/cluster/lib.sh
source e2e/cluster/lib.sh
e2e/cluster/build.sh >/dev/null
helm="${BIN_DIR}/helm"

kv_bin="$(scripts/pytool.sh kubernetes-validate "$KUBERNETES_VALIDATE_VERSION")"
checkov_bin="$(scripts/pytool.sh checkov "$CHECKOV_VERSION")"

out=target/scan
rm -rf "$out"
mkdir -p "$out/chart" "$out/render"

# The chart as installed: default values, and every optional template turned on.
"$helm" template palisade charts/palisade --namespace palisade-system >"$out/chart/default.yaml"
"$helm" template palisade charts/palisade --namespace palisade-system \
  --set watchNamespace=agents --set metrics.serviceMonitor.enabled=true \
  --set metrics.prometheusRule.enabled=true \
  --set grafanaDashboard.enabled=true --set runtimeClasses.gvisor.create=true \
  --set runtimeClasses.kata.create=true --set "cluster.cidrs={10.244.0.0/16}" \
  >"$out/chart/all-features.yaml"

# What the operator creates for every example: with the default cluster facts (and the egress
# gateway), and on a cluster with Cilium, the Security Profiles Operator and runtimes that apply
# seccomp.
for f in examples/*.yaml; do
  name="$(basename "$f" .yaml)"
  "$palisade" render -n agents -f "$f" --gateway 10.96.0.50:3128 >"$out/render/$name.yaml" 2>/dev/null
  "$palisade" render -n agents -f "$f" --cilium --seccomp-profile-crd --seccomp-applied gvisor,kata \
    --cluster-cidr 10.244.0.0/16 >"$out/render/$name-full-cluster.yaml" 2>/dev/null
done
objects=$(cat "$out"/chart/*.yaml "$out"/render/*.yaml | grep -c '^kind:')
echo "scan: $objects objects rendered into $out"

status=0
echo "scan: checkov $CHECKOV_VERSION (kubernetes, dockerfile)"
"$checkov_bin/checkov" --config-file .checkov.yaml --skip-download --quiet \
  --framework kubernetes dockerfile \
  -f "$out"/chart/*.yaml "$out"/render/*.yaml Dockerfile || status=1

# kubernetes-validate knows only built-in kinds: the others (ServiceMonitor, CiliumNetworkPolicy,
# SeccompProfile) are set aside, and said so.
"$kv_bin/python" - "$out" <<'PY'
import pathlib, sys, yaml
BUILTIN = {"v1", "apps/v1", "policy/v1", "rbac.authorization.k8s.io/v1", "networking.k8s.io/v1",
           "node.k8s.io/v1", "apiextensions.k8s.io/v1", "coordination.k8s.io/v1", "batch/v1",
           "admissionregistration.k8s.io/v1"}
root = pathlib.Path(sys.argv[1])
builtin, other = [], set()
for path in sorted(root.glob("*/*.yaml")):
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        if doc.get("apiVersion") in BUILTIN:
            builtin.append(doc)
        else:
            other.add(f'{doc.get("apiVersion")} {doc.get("kind")}')
(root / "builtin.yaml").write_text(yaml.safe_dump_all(builtin, sort_keys=False))
print(f"scan: {len(builtin)} built-in objects for kubernetes-validate; not built-in: {', '.join(sorted(other)) or 'none'}")
PY
for k8s in 1.33.0 1.34.0; do
  echo "scan: kubernetes-validate --strict -k $k8s"
  "$kv_bin/kubernetes-validate" --strict --quiet -k "$k8s" "$out/builtin.yaml" || status=1
done
exit "$status"
