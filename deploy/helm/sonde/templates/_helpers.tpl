{{/* Name prefix of every object: the release name, unless it lacks the chart's name. */}}
{{- define "sonde.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sonde.labels" -}}
app.kubernetes.io/name: sonde
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sonde
{{- if not .Values.plainLabels }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}
{{- end -}}

{{- define "sonde.selector" -}}
app.kubernetes.io/name: sonde
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sonde.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) -}}
{{- end -}}

{{/* http:// or https:// URL of the collector's Service, as agents reach it. */}}
{{- define "sonde.collectorUrl" -}}
{{- printf "%s://%s-collector.%s.svc:%d" (ternary "https" "http" .Values.tls.enabled) (include "sonde.fullname" .) .Release.Namespace (int .Values.collector.service.port) -}}
{{- end -}}

{{/* Whether the collector stores into PostgreSQL. */}}
{{- define "sonde.postgres" -}}
{{- if or .Values.collector.postgres.url .Values.collector.postgres.existingSecret }}true{{ end -}}
{{- end -}}

{{- define "sonde.metricsAnnotations" -}}
{{- if and .root.Values.metrics.enabled .root.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* Whether the agent may watch the Kubernetes API (and so needs its RBAC and token). */}}
{{- define "sonde.agentWatchesKubernetes" -}}
{{- if and .Values.agent.identity.enabled (ne .Values.agent.identity.kubernetes "off") }}true{{ end }}
{{- end }}
