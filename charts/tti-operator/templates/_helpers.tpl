{{/*
The chart name, cut to 63 characters: Kubernetes name fields are limited to that
(DNS-1123 labels).
*/}}
{{- define "tti-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The fully qualified name of this release's objects, cut to 63 characters.
If the release name already contains the chart name it is used as is.
*/}}
{{- define "tti-operator.fullname" -}}
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

{{/*
Chart name and version, as used by the helm.sh/chart label.
*/}}
{{- define "tti-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object of the release.
*/}}
{{- define "tti-operator.labels" -}}
helm.sh/chart: {{ include "tti-operator.chart" . }}
{{ include "tti-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tti-operator
{{- end }}

{{/*
Labels that select the operator pod; immutable once installed.
*/}}
{{- define "tti-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tti-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The ServiceAccount the operator runs as.
*/}}
{{- define "tti-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tti-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {repository, tag, digest}; the tag defaults to the
chart's appVersion and a digest, when given, wins over the tag.
*/}}
{{- define "tti-operator.imageRef" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
The namespaces the operator watches and holds Roles in; empty means all
namespaces (one ClusterRole).
*/}}
{{- define "tti-operator.watchNamespaces" -}}
{{- .Values.watchNamespaces | uniq | join "," }}
{{- end }}

{{/*
Pod security context: the same hardening the operator gives model pods
(non-root, fixed uid/gid of the images, seccomp RuntimeDefault).
*/}}
{{- define "tti-operator.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container security context: the operator's builders give model containers the
same (tests/chart compares them): no privilege escalation, every capability
dropped, read-only root filesystem, the images' non-root uid.
*/}}
{{- define "tti-operator.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The operator's settings, passed as the environment variables it reads.
*/}}
{{- define "tti-operator.operatorEnv" -}}
- name: TTI_OPERATOR_SERVER_IMAGE
  value: {{ include "tti-operator.imageRef" (list .Values.serverImage .) | quote }}
- name: TTI_OPERATOR_NAMESPACES
  value: {{ include "tti-operator.watchNamespaces" . | quote }}
- name: TTI_OPERATOR_LIVENESS_PORT
  value: {{ .Values.operator.livenessPort | quote }}
- name: TTI_OPERATOR_LOG_FORMAT
  value: {{ .Values.operator.logFormat | quote }}
- name: TTI_OPERATOR_VERBOSE
  value: {{ .Values.operator.verbose | quote }}
- name: TTI_OPERATOR_MAX_WORKERS
  value: {{ .Values.operator.maxWorkers | quote }}
- name: TTI_OPERATOR_PLAYGROUND
  value: {{ .Values.playground | quote }}
- name: TTI_OPERATOR_AUTOSCALE_INTERVAL_S
  value: {{ .Values.operator.autoscaleIntervalSeconds | quote }}
- name: TTI_OPERATOR_CACHE_ENABLED
  value: {{ .Values.modelCache.enabled | quote }}
- name: TTI_OPERATOR_CACHE_STORAGE_CLASS
  value: {{ .Values.modelCache.storageClassName | quote }}
- name: TTI_OPERATOR_CACHE_SIZE
  value: {{ .Values.modelCache.size | quote }}
- name: TTI_OPERATOR_ADAPTER_CACHE_SIZE
  value: {{ .Values.modelCache.adapterSize | quote }}
- name: TTI_OPERATOR_CACHE_ACCESS_MODE
  value: {{ .Values.modelCache.accessMode | quote }}
- name: TTI_OPERATOR_CACHE_RETENTION_S
  value: {{ .Values.modelCache.retentionSeconds | quote }}
- name: TTI_OPERATOR_CACHE_FETCH_DEADLINE_S
  value: {{ .Values.modelCache.fetchDeadlineSeconds | quote }}
- name: TTI_OPERATOR_CACHE_FETCH_RESOURCES
  value: {{ .Values.modelCache.fetchResources | toJson | quote }}
- name: TTI_OPERATOR_HUB_TIMEOUT_S
  value: {{ .Values.modelCache.hubTimeoutSeconds | quote }}
- name: TTI_OPERATOR_HUB_ENDPOINT
  value: {{ .Values.modelCache.hubEndpoint | quote }}
{{- if .Values.gateway.enabled }}
- name: TTI_OPERATOR_GATEWAY_URL
  value: {{ include "tti-operator.gatewayMetricsUrl" . | quote }}
{{- end }}
- name: TTI_OPERATOR_NETWORK_POLICIES
  value: {{ .Values.networkPolicies.enabled | quote }}
- name: TTI_OPERATOR_OWN_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: TTI_OPERATOR_OWN_POD_LABELS
  value: {{ include "tti-operator.operatorPodLabels" . | fromYaml | include "tti-operator.labelList" | quote }}
- name: TTI_OPERATOR_GATEWAY_NAMESPACE
  value: {{ .Release.Namespace | quote }}
- name: TTI_OPERATOR_GATEWAY_POD_LABELS
  value: {{ include "tti-operator.gatewayPodLabels" . | fromYaml | include "tti-operator.labelList" | quote }}
- name: TTI_OPERATOR_METRICS_SCRAPERS
  value: {{ include "tti-operator.metricsScrapers" . | quote }}
{{- end }}

{{/*
The labels that pick the operator's pod (and no other pod of the release: the test pod
shares the selector labels, not the component).
*/}}
{{- define "tti-operator.operatorPodLabels" -}}
{{ include "tti-operator.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The labels that pick the gateway's pods. */}}
{{- define "tti-operator.gatewayPodLabels" -}}
{{ include "tti-operator.gatewaySelectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{/* A map of labels as `k=v,k=v` (sorted), the form the operator's settings read. */}}
{{- define "tti-operator.labelList" -}}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/*
Who may read /metrics besides the operator, as NetworkPolicy peers in JSON: the pods of
networkPolicies.metricsNamespaceSelector's namespaces, or none.
*/}}
{{- define "tti-operator.metricsScrapers" -}}
{{- $selector := .Values.networkPolicies.metricsNamespaceSelector }}
{{- if kindIs "map" $selector }}
{{- list (dict "namespaceSelector" $selector) | toJson }}
{{- else }}
{{- "[]" }}
{{- end }}
{{- end }}

{{/*
The model `helm test` calls: tests.model, else the first of `models`; as a
dict with name and namespace, or empty when there is none.
*/}}
{{- define "tti-operator.testModel" -}}
{{- $found := dict }}
{{- range .Values.models }}
{{- if and (not $found.name) (or (not $.Values.tests.model) (eq .name $.Values.tests.model)) }}
{{- $_ := set $found "name" .name }}
{{- $_ := set $found "namespace" (.namespace | default $.Release.Namespace) }}
{{- end }}
{{- end }}
{{- if and .Values.tests.model (not $found.name) }}
{{- $_ := set $found "name" .Values.tests.model }}
{{- $_ := set $found "namespace" (.Values.tests.namespace | default .Release.Namespace) }}
{{- end }}
{{- toJson $found }}
{{- end }}

{{/*
The in-cluster URL of a model's Service: the operator names the Service after
the model and serves HTTP on port 8080.
*/}}
{{- define "tti-operator.modelUrl" -}}
{{- printf "http://%s.%s.svc:8080" .name .namespace }}
{{- end }}

{{/* The model's gRPC API (caikit's ComputerVisionService) as host:port. */}}
{{- define "tti-operator.modelGrpcTarget" -}}
{{- printf "%s.%s.svc:8085" .name .namespace }}
{{- end }}

{{/*
The gateway's name: the release's full name and "-gateway", within 63 characters.
*/}}
{{- define "tti-operator.gatewayName" -}}
{{- printf "%s-gateway" (include "tti-operator.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/*
Labels that select the gateway's pods: a name of their own, so the operator's
selector (name and instance) never matches them.
*/}}
{{- define "tti-operator.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-gateway" (include "tti-operator.name" . | trunc 55 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The gateway's labels: the release's, with its own name and component.
*/}}
{{- define "tti-operator.gatewayLabels" -}}
helm.sh/chart: {{ include "tti-operator.chart" . }}
{{ include "tti-operator.gatewaySelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tti-operator
app.kubernetes.io/component: gateway
{{- end }}

{{/*
The gateway's in-cluster URL: one base URL for every model.
*/}}
{{- define "tti-operator.gatewayUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "tti-operator.gatewayName" .) .Release.Namespace (int .Values.gateway.service.port) }}
{{- end }}

{{/*
The gateway's metrics port, in the cluster: where the operator's autoscaler reads how many
requests the gateway holds (its /metrics is not on the clients' port).
*/}}
{{- define "tti-operator.gatewayMetricsUrl" -}}
{{- printf "http://%s.%s.svc:%d" (include "tti-operator.gatewayName" .) .Release.Namespace (int .Values.gateway.metricsPort) }}
{{- end }}

{{/*
The aggregatable ClusterRole a caller of the gateway is bound to (gateway.identity).
*/}}
{{- define "tti-operator.modelUserRole" -}}
{{- printf "%s-model-user" (include "tti-operator.fullname" . | trunc 52 | trimSuffix "-") }}
{{- end }}

{{/*
Any authentication at the gateway (static tokens or Kubernetes identities): "true" or "".
*/}}
{{- define "tti-operator.gatewayAuth" -}}
{{- if or .Values.gateway.auth.secretName .Values.gateway.identity.enabled }}true{{ end }}
{{- end }}

{{/*
Where the gateway reads its bearer tokens, when gateway.auth.secretName is set.
*/}}
{{- define "tti-operator.gatewayTokensDir" -}}
/etc/tti-gateway/tokens
{{- end }}

{{/*
The gateway's settings, passed as the environment variables it reads.
*/}}
{{- define "tti-operator.gatewayEnv" -}}
- name: TTI_GATEWAY_SOURCE
  value: cluster
- name: TTI_GATEWAY_NAMESPACES
  value: {{ include "tti-operator.watchNamespaces" . | quote }}
- name: TTI_GATEWAY_PORT
  value: "8080"
- name: TTI_GATEWAY_METRICS_PORT
  value: {{ .Values.gateway.metricsPort | int | quote }}
{{- with .Values.gateway.trustedProxies }}
- name: TTI_GATEWAY_TRUSTED_PROXIES
  value: {{ join "," . | quote }}
{{- end }}
- name: TTI_GATEWAY_MAX_HEADER_BYTES
  value: {{ .Values.gateway.clientLimits.maxHeaderBytes | int | quote }}
- name: TTI_GATEWAY_MAX_HEADERS
  value: {{ .Values.gateway.clientLimits.maxHeaders | int | quote }}
- name: TTI_GATEWAY_HEADER_TIMEOUT
  value: {{ .Values.gateway.clientLimits.headerTimeoutSeconds | quote }}
- name: TTI_GATEWAY_BODY_TIMEOUT
  value: {{ .Values.gateway.clientLimits.bodyTimeoutSeconds | quote }}
- name: TTI_GATEWAY_KEEPALIVE_TIMEOUT
  value: {{ .Values.gateway.clientLimits.keepaliveTimeoutSeconds | quote }}
- name: TTI_GATEWAY_HOLD_TIMEOUT
  value: {{ .Values.gateway.holdTimeoutSeconds | quote }}
- name: TTI_GATEWAY_MAX_HELD
  value: {{ .Values.gateway.maxHeld | quote }}
- name: TTI_GATEWAY_STREAM_IDLE_TIMEOUT
  value: {{ .Values.gateway.streamIdleTimeoutSeconds | quote }}
- name: TTI_GATEWAY_MAX_BODY_BYTES
  value: {{ .Values.gateway.maxBodyBytes | int | quote }}
- name: TTI_GATEWAY_LOG_LEVEL
  value: {{ .Values.gateway.logLevel | quote }}
- name: TTI_GATEWAY_PLAYGROUND
  value: {{ .Values.playground | quote }}
{{- if .Values.gateway.auth.secretName }}
- name: TTI_GATEWAY_AUTH_TOKENS_FILE
  value: {{ printf "%s/%s" (include "tti-operator.gatewayTokensDir" .) .Values.gateway.auth.key | quote }}
{{- end }}
{{- with .Values.gateway.identity }}
{{- if .enabled }}
- name: TTI_GATEWAY_IDENTITY
  value: "true"
- name: TTI_GATEWAY_IDENTITY_AUDIENCE
  value: {{ .audience | quote }}
- name: TTI_GATEWAY_IDENTITY_ALLOW_TTL
  value: {{ .allowCacheSeconds | quote }}
- name: TTI_GATEWAY_IDENTITY_DENY_TTL
  value: {{ .denyCacheSeconds | quote }}
- name: TTI_GATEWAY_IDENTITY_CACHE_SIZE
  value: {{ .cacheSize | int | quote }}
{{- end }}
{{- end }}
{{- end }}
