{{/* Name of the chart, or nameOverride. */}}
{{- define "palisade.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Prefix of every object name: fullnameOverride, else the release name (with the chart name
when the release name does not contain it). */}}
{{- define "palisade.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the operator pods. */}}
{{- define "palisade.selectorLabels" -}}
app.kubernetes.io/name: {{ include "palisade.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object of the chart. */}}
{{- define "palisade.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "palisade.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: palisade
{{- end -}}

{{/* The operator's ServiceAccount. */}}
{{- define "palisade.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "palisade.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image: repository@digest when a digest is set, else repository:tag. */}}
{{- define "palisade.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Runtimes whose nodes apply the pod's seccomp profile, as the operator's flag value. */}}
{{- define "palisade.seccompApplied" -}}
{{- $runtimes := list -}}
{{- if .Values.runtimeClasses.gvisor.seccompApplied -}}{{- $runtimes = append $runtimes "gvisor" -}}{{- end -}}
{{- if .Values.runtimeClasses.kata.seccompApplied -}}{{- $runtimes = append $runtimes "kata" -}}{{- end -}}
{{- join "," $runtimes -}}
{{- end -}}

{{/* Rules for the namespaced objects the operator reads and writes: in the ClusterRole, or in a
Role of watchNamespace. e2e/rbac-allowlist.yaml is their checked-in ceiling. */}}
{{- define "palisade.namespacedRules" }}
# The kinds: read, and status written by server-side apply. Sandboxes delete themselves
# ttlSecondsAfterFinished after the agent finished. Pools create their warm sandboxes and
# delete stale ones; a sandbox takes a warm one by a patch of its annotation.
- apiGroups: [palisade.dev]
  resources: [agentsandboxes]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [palisade.dev]
  resources: [agentpolicies, agentsandboxpools]
  verbs: [get, list, watch]
- apiGroups: [palisade.dev]
  resources: [agentsandboxes/status, agentpolicies/status, agentsandboxpools/status]
  verbs: [patch]
# Children carry an owner reference with blockOwnerDeletion, which clusters running the
# OwnerReferencesPermissionEnforcement admission plugin allow only with this.
- apiGroups: [palisade.dev]
  resources: [agentsandboxes/finalizers, agentsandboxpools/finalizers]
  verbs: [update]
# Sandbox pods: created behind a scheduling gate, let through by a patch, replaced by deletion
# when the policy changes.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, create, patch, delete]
# The other children: applied, and replaced (update) when someone added fields to them. The
# isolation NetworkPolicy's finalizer is released by a patch. A Service (or a Cilium policy,
# or a SeccompProfile) that leaves the plan is deleted; claims are kept, so are never deleted.
# `delete` on ServiceAccounts, claims and NetworkPolicies is never used to delete (the chart's
# admission policy refuses it): a sandbox that takes a warm sandbox of a pool changes its
# children's owner references, which the OwnerReferencesPermissionEnforcement admission plugin
# allows only to those who may delete the object.
- apiGroups: [""]
  resources: [serviceaccounts, persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, update, delete]
{{- if .Values.rbac.cilium }}
- apiGroups: [cilium.io]
  resources: [ciliumnetworkpolicies]
  verbs: [get, list, watch, create, patch, update, delete]
{{- end }}
{{- if .Values.rbac.securityProfilesOperator }}
- apiGroups: [security-profiles-operator.x-k8s.io]
  resources: [seccompprofiles]
  verbs: [get, list, watch, create, patch, update, delete]
{{- end }}
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

{{/* The metrics Service: a DNS label, so the suffix fits in 63 characters. */}}
{{- define "palisade.metricsServiceName" -}}
{{- printf "%s-metrics" (include "palisade.fullname" . | trunc 55 | trimSuffix "-") -}}
{{- end -}}

{{/* The leader Lease: one per release, so two releases in one namespace do not share it. */}}
{{- define "palisade.leaseName" -}}
{{- include "palisade.fullname" . -}}
{{- end -}}

{{/*
CEL: the pod's RuntimeClass is one the chart names (runtimeClasses.*.name, and
admissionPolicy.runtimeClassNames, where a trailing * means a prefix).
*/}}
{{- define "palisade.runtimeClassCheck" -}}
{{- $exact := list .Values.runtimeClasses.gvisor.name .Values.runtimeClasses.kata.name -}}
{{- $prefixes := list -}}
{{- range .Values.admissionPolicy.runtimeClassNames -}}
{{- if hasSuffix "*" . -}}
{{- $prefixes = append $prefixes (trimSuffix "*" .) -}}
{{- else -}}
{{- $exact = append $exact . -}}
{{- end -}}
{{- end -}}
object.spec.runtimeClassName in [{{ range $i, $n := $exact }}{{ if $i }}, {{ end }}'{{ $n }}'{{ end }}]
{{- range $prefixes }} || object.spec.runtimeClassName.startsWith('{{ . }}'){{ end }}
{{- end -}}

{{/* Prefix of the egress gateway's objects. */}}
{{- define "palisade.gatewayName" -}}
{{- printf "%s-gateway" (include "palisade.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the gateway pods (distinct from the operator's). */}}
{{- define "palisade.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-gateway" (include "palisade.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every gateway object. */}}
{{- define "palisade.gatewayLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "palisade.gatewaySelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: gateway
app.kubernetes.io/part-of: palisade
{{- end -}}

{{/* The Secret holding the key of the sandboxes' proxy credentials. */}}
{{- define "palisade.gatewayKeySecret" -}}
{{- default (printf "%s-key" (include "palisade.gatewayName" .)) .Values.gateway.credentialKey.existingSecret -}}
{{- end -}}

{{/* The generated credential key (base64), the same in every template of one render: the
existing Secret's when there is one (helm lookup), else a new random one. */}}
{{- define "palisade.gatewayKey" -}}
{{- if not (hasKey .Values.gateway "_key") -}}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "palisade.gatewayKeySecret" .) -}}
{{- if and $existing $existing.data (index $existing.data "key") -}}
{{- $_ := set .Values.gateway "_key" (index $existing.data "key") -}}
{{- else -}}
{{- $_ := set .Values.gateway "_key" (randAlphaNum 64 | b64enc) -}}
{{- end -}}
{{- end -}}
{{- index .Values.gateway "_key" -}}
{{- end -}}

{{/* Checksum of the generated key, for the pods that mount it (none with existingSecret). */}}
{{- define "palisade.gatewayKeyChecksum" -}}
{{- if and .Values.gateway.enabled (not .Values.gateway.credentialKey.existingSecret) -}}
{{- include "palisade.gatewayKey" . | sha256sum | trunc 16 -}}
{{- end -}}
{{- end -}}
