{{/*
Names and labels, after `helm create`'s conventions.
*/}}

{{- define "chat-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: release-chart, cut to 63 characters (DNS label limit); the release name alone
when it already contains the chart name.
*/}}
{{- define "chat-service.fullname" -}}
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

{{- define "chat-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chat-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chat-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "chat-service.labels" -}}
helm.sh/chart: {{ include "chat-service.chart" . }}
{{ include "chat-service.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chat-service
{{- end }}

{{/* The app pods: selector labels plus the component. */}}
{{- define "chat-service.appSelectorLabels" -}}
{{ include "chat-service.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{/* Label that lets a pod through the NetworkPolicy to the app's HTTP port. */}}
{{- define "chat-service.clientLabel" -}}
{{ include "chat-service.fullname" . }}-client: "true"
{{- end }}

{{- define "chat-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chat-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository:tag, or repository@digest when a digest is given. */}}
{{- define "chat-service.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "chat-service.secretName" -}}
{{- default (include "chat-service.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "chat-service.redisName" -}}
{{- printf "%s-redis" (include "chat-service.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Where the Secret's keys appear as files in the app and test pods. */}}
{{- define "chat-service.secretsDir" -}}
/etc/chat-service/secrets
{{- end }}

{{/*
Seconds the kubelet waits after starting termination: the preStop sleep, then the
streams' drain (CHAT_GRACEFUL_TIMEOUT), then the padding for gunicorn's kill margin and
exit. Computed, so raising gracefulTimeout can never leave the kubelet killing streams
that the app was still allowed to finish.
*/}}
{{- define "chat-service.terminationGracePeriodSeconds" -}}
{{- add .Values.lifecycle.preStopSleepSeconds .Values.config.gracefulTimeout .Values.lifecycle.terminationGracePaddingSeconds }}
{{- end }}

{{/*
Refuse combinations the schema cannot express, with a message that says what to set.
*/}}
{{- define "chat-service.validate" -}}
{{- if eq (int .Values.ports.http) (int .Values.ports.metrics) }}
{{- fail "ports.http and ports.metrics must differ: /metrics must never share the public port" }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- if and (eq .Values.auth.mode "publicKey") (not .Values.secrets.jwtPublicKey) }}
{{- fail "auth.mode publicKey needs secrets.jwtPublicKey (or secrets.existingSecret)" }}
{{- end }}
{{- if and .Values.redis.enabled (not .Values.redis.internal.enabled) (not .Values.secrets.redisUrl) }}
{{- fail "redis.internal.enabled is false: set secrets.redisUrl (or secrets.existingSecret), or redis.enabled false" }}
{{- end }}
{{- if and .Values.redis.enabled (not .Values.redis.internal.enabled) .Values.secrets.redisUrl }}
{{- $schemes := dict "standalone" (list "redis://" "rediss://") "sentinel" (list "redis+sentinel://") "cluster" (list "redis+cluster://") }}
{{- $url := .Values.secrets.redisUrl }}
{{- $matches := false }}
{{- range (get $schemes .Values.redis.external.mode) }}
{{- if hasPrefix . $url }}{{ $matches = true }}{{ end }}
{{- end }}
{{- if not $matches }}
{{- fail (printf "secrets.redisUrl must start with %s for redis.external.mode %s" (join " or " (get $schemes .Values.redis.external.mode)) .Values.redis.external.mode) }}
{{- end }}
{{- if and .Values.redis.external.tls.privateCa (not (hasPrefix "rediss://" $url)) }}
{{- fail "redis.external.tls.privateCa needs a rediss:// URL in secrets.redisUrl" }}
{{- end }}
{{- end }}
{{- if and .Values.redis.external.tls.privateCa (not .Values.secrets.redisCa) }}
{{- fail "redis.external.tls.privateCa needs secrets.redisCa (the CA's PEM certificate), or secrets.existingSecret" }}
{{- end }}
{{- end }}
{{- if and (eq .Values.auth.mode "oidc") (or (not .Values.auth.oidc.issuer) (not .Values.auth.oidc.clientId)) }}
{{- fail "auth.mode oidc needs auth.oidc.issuer and auth.oidc.clientId" }}
{{- end }}
{{- if and (eq .Values.auth.mode "oidc") (eq .Values.config.env "production") (or (not .Values.auth.audience) (eq .Values.auth.audience .Values.auth.oidc.clientId)) }}
{{- fail "auth.mode oidc in production needs auth.audience: the audience of the access tokens the provider issues for this API, not auth.oidc.clientId (every ID token's audience)" }}
{{- end }}
{{- if and (eq .Values.auth.mode "jwks") (not .Values.auth.jwksUrl) }}
{{- fail "auth.mode jwks needs auth.jwksUrl" }}
{{- end }}
{{- if and (eq .Values.backend.type "openai") (or (not .Values.backend.openai.baseUrl) (not .Values.backend.openai.model)) }}
{{- fail "backend.type openai needs backend.openai.baseUrl and backend.openai.model" }}
{{- end }}
{{- if and (eq .Values.config.env "production") (has "*" .Values.config.corsOrigins) }}
{{- fail "config.corsOrigins contains '*', which config.env production refuses; list exact origins" }}
{{- end }}
{{- end }}

{{/*
The app's environment. Shared by the Deployment and the `helm test` pod, so that the
test's `chat-service token` signs with exactly the key, audience and issuer the server
checks.
*/}}
{{- define "chat-service.env" -}}
{{- $secretsDir := include "chat-service.secretsDir" . -}}
- name: CHAT_ENV
  value: {{ .Values.config.env | quote }}
- name: CHAT_HOST
  value: "0.0.0.0"
- name: CHAT_PORT
  value: {{ .Values.ports.http | quote }}
- name: CHAT_METRICS_PORT
  value: {{ .Values.ports.metrics | quote }}
- name: CHAT_WORKERS
  value: {{ .Values.config.workers | quote }}
- name: CHAT_GRACEFUL_TIMEOUT
  value: {{ .Values.config.gracefulTimeout | quote }}
- name: CHAT_CORS_ORIGINS
  value: {{ join "," .Values.config.corsOrigins | quote }}
- name: CHAT_TRUSTED_PROXIES
  value: {{ join "," .Values.config.trustedProxies | quote }}
- name: CHAT_RATE_LIMIT
  value: {{ .Values.config.rateLimit | quote }}
- name: CHAT_MAX_STREAMS_PER_USER
  value: {{ .Values.config.maxStreamsPerUser | quote }}
- name: CHAT_IP_RATE_LIMIT
  value: {{ .Values.config.ipRateLimit | quote }}
- name: CHAT_HEADER_TIMEOUT
  value: {{ .Values.config.headerTimeout | quote }}
- name: CHAT_BODY_TIMEOUT
  value: {{ .Values.config.bodyTimeout | quote }}
- name: CHAT_MAX_CONNECTIONS
  value: {{ .Values.config.maxConnections | quote }}
- name: CHAT_MAX_CONNECTIONS_PER_ADDRESS
  value: {{ .Values.config.maxConnectionsPerAddress | quote }}
- name: CHAT_RESUME_RATE_LIMIT
  value: {{ .Values.config.resumeRateLimit | quote }}
- name: CHAT_MAX_READERS_PER_STREAM
  value: {{ .Values.config.maxReadersPerStream | quote }}
- name: CHAT_MAX_CONVERSATIONS_PER_USER
  value: {{ .Values.config.maxConversationsPerUser | quote }}
- name: CHAT_CACHE_TTL
  value: {{ .Values.config.cacheTtl | quote }}
- name: CHAT_CACHE_SCOPE
  value: {{ .Values.config.cacheScope | quote }}
- name: CHAT_SSE_PING_SECONDS
  value: {{ .Values.config.ssePingSeconds | quote }}
- name: CHAT_RESUME_WINDOW
  value: {{ .Values.config.resumeWindow | quote }}
- name: CHAT_RESUME_MAX_BYTES
  value: {{ .Values.config.resumeMaxBytes | quote }}
{{- with .Values.config.tokenBudget }}
- name: CHAT_TOKEN_BUDGET
  value: {{ . | quote }}
{{- end }}
- name: CHAT_MAX_OUTPUT_TOKENS
  value: {{ .Values.config.maxOutputTokens | quote }}
- name: CHAT_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: CHAT_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
{{- if eq .Values.auth.mode "oidc" }}
- name: CHAT_OIDC_ISSUER
  value: {{ .Values.auth.oidc.issuer | quote }}
- name: CHAT_OIDC_CLIENT_ID
  value: {{ .Values.auth.oidc.clientId | quote }}
- name: CHAT_OIDC_SCOPES
  value: {{ .Values.auth.oidc.scopes | quote }}
{{- else }}
- name: CHAT_JWT_ALGORITHMS
  value: {{ join "," .Values.auth.algorithms | quote }}
{{- end }}
{{- with .Values.auth.audience }}
- name: CHAT_JWT_AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- with .Values.auth.issuer }}
- name: CHAT_JWT_ISSUER
  value: {{ . | quote }}
{{- end }}
{{- if eq .Values.auth.mode "secret" }}
- name: CHAT_JWT_SECRET_FILE
  value: {{ printf "%s/%s" $secretsDir .Values.secrets.keys.jwtSecret | quote }}
{{- else if eq .Values.auth.mode "publicKey" }}
- name: CHAT_JWT_PUBLIC_KEY_FILE
  value: {{ printf "%s/%s" $secretsDir .Values.secrets.keys.jwtPublicKey | quote }}
{{- else if eq .Values.auth.mode "jwks" }}
- name: CHAT_JWT_JWKS_URL
  value: {{ .Values.auth.jwksUrl | quote }}
{{- end }}
{{- if .Values.redis.enabled }}
{{- if .Values.redis.internal.enabled }}
- name: CHAT_REDIS_URL
  value: {{ printf "redis://%s:6379/0" (include "chat-service.redisName" .) | quote }}
{{- else }}
- name: CHAT_REDIS_URL_FILE
  value: {{ printf "%s/%s" $secretsDir .Values.secrets.keys.redisUrl | quote }}
{{- if .Values.redis.external.tls.privateCa }}
- name: CHAT_REDIS_CA_FILE
  value: {{ printf "%s/%s" $secretsDir .Values.secrets.keys.redisCa | quote }}
{{- end }}
{{- end }}
{{- end }}
- name: CHAT_BACKEND
  value: {{ .Values.backend.type | quote }}
{{- with .Values.backend.models }}
- name: CHAT_MODELS
  value: {{ join "," . | quote }}
{{- end }}
{{- if eq .Values.backend.type "openai" }}
- name: CHAT_OPENAI_BASE_URL
  value: {{ .Values.backend.openai.baseUrl | quote }}
- name: CHAT_OPENAI_MODEL
  value: {{ .Values.backend.openai.model | quote }}
{{- if .Values.backend.openai.useApiKey }}
- name: CHAT_OPENAI_API_KEY_FILE
  value: {{ printf "%s/%s" $secretsDir .Values.secrets.keys.openaiApiKey | quote }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The pod-side pieces every pod of the app image needs: /tmp and the Secret's files. */}}
{{- define "chat-service.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
- name: secrets
  secret:
    secretName: {{ include "chat-service.secretName" . }}
    defaultMode: 0440
{{- end }}

{{- define "chat-service.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: secrets
  mountPath: {{ include "chat-service.secretsDir" . }}
  readOnly: true
{{- end }}
