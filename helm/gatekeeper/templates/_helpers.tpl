{{- define "gatekeeper.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "gatekeeper.headless" -}}{{ include "gatekeeper.fullname" . }}-peers{{- end -}}

{{/* The release's own labels (every object and pod of the release). */}}
{{- define "gatekeeper.releaseLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The node pods only: what the StatefulSet, Services, PDB, anti-affinity and NetworkPolicy
select (the chart's Job and test pods carry other components, so nothing selects them). */}}
{{- define "gatekeeper.selectorLabels" -}}
{{ include "gatekeeper.releaseLabels" . }}
app.kubernetes.io/component: node
{{- end -}}

{{- define "gatekeeper.labels" -}}
{{ include "gatekeeper.releaseLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Shares needed: the value, or a majority of the voters. */}}
{{- define "gatekeeper.threshold" -}}{{ int .Values.threshold }}{{- end -}}

{{/* The pod security settings every pod of the chart runs with. */}}
{{- define "gatekeeper.podSecurity" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The DNS name of node i (1-based; pod ordinal i-1) on the headless Service. */}}
{{- define "gatekeeper.podHost" -}}
{{- $ := index . 0 -}}{{- $i := index . 1 -}}
{{- printf "%s-%d.%s.%s.svc.cluster.local" (include "gatekeeper.fullname" $) (sub (int $i) 1) (include "gatekeeper.headless" $) $.Release.Namespace -}}
{{- end -}}

{{- define "gatekeeper.tlsSecret" -}}
{{- $ := index . 0 -}}{{- $i := index . 1 -}}
{{- printf "%s-%d" (default (printf "%s-node" (include "gatekeeper.fullname" $)) $.Values.tls.secretPrefix) (int $i) -}}
{{- end -}}

{{/* `--member ID=RAFT=API` for every voter, as `admin init` takes them. */}}
{{- define "gatekeeper.members" -}}
{{- $ := . -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $host := include "gatekeeper.podHost" (list $ (add $i 1)) -}}
{{ printf " --member %d=%s:%d=%s:%d" (add $i 1) $host (int $.Values.ports.cluster) $host (int $.Values.ports.api) }}
{{- end -}}
{{- end -}}

{{/* The operator's TLS material, mounted in the chart's Jobs and test pod. */}}
{{- define "gatekeeper.operatorEnv" -}}
- name: GATEKEEPER_ADMIN_CA
  value: /operator/ca.crt
- name: GATEKEEPER_ADMIN_CERT
  value: /operator/tls.crt
- name: GATEKEEPER_ADMIN_KEY
  value: /operator/tls.key
{{- end -}}
