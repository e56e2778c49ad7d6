{{/* Names, labels and images shared by every template. */}}

{{- define "lamina.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lamina.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lamina.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels; $component is operator, gateway or redis. */}}
{{- define "lamina.labels" -}}
helm.sh/chart: {{ include "lamina.chart" .root }}
{{ include "lamina.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: lamina
{{- end }}

{{- define "lamina.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lamina.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "lamina.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "lamina.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtimeImage.repository (default (printf "%s-{runtime}" .Chart.AppVersion) .Values.runtimeImage.tag) }}
{{- end }}

{{- define "lamina.operatorName" -}}
{{- printf "%s-operator" (include "lamina.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lamina.gatewayName" -}}
{{- printf "%s-gateway" (include "lamina.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lamina.redisName" -}}
{{- printf "%s-redis" (include "lamina.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lamina.gatewayUrl" -}}
{{- printf "http://%s.%s.svc:%v" (include "lamina.gatewayName" .) .Release.Namespace .Values.gateway.service.port }}
{{- end }}

{{- define "lamina.redisUrl" -}}
{{- if .Values.redis.enabled }}
{{- printf "redis://%s.%s.svc:6379/0" (include "lamina.redisName" .) .Release.Namespace }}
{{- else }}
{{- .Values.redis.url }}
{{- end }}
{{- end }}

{{/* The Secret holding the installation key (invoke secrets, execution credentials). */}}
{{- define "lamina.authSecretName" -}}
{{- default (printf "%s-auth" (include "lamina.fullname" .)) .Values.auth.existingKeySecret }}
{{- end }}

{{/* The Secret holding the bundled Redis's passwords. */}}
{{- define "lamina.redisSecretName" -}}
{{- default (printf "%s-redis" (include "lamina.fullname" .)) .Values.redis.existingSecret }}
{{- end }}

{{/* The gateway's ServiceAccount as Kubernetes names it in requests. */}}
{{- define "lamina.gatewayUser" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "lamina.gatewayName" .) }}
{{- end }}

{{/* Redis host:port (bundled) for URLs that carry a password. */}}
{{- define "lamina.redisHost" -}}
{{- printf "%s.%s.svc:6379" (include "lamina.redisName" .) .Release.Namespace }}
{{- end }}
