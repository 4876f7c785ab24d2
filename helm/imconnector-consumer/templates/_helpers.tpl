{{/*
Names. Kubernetes name fields are DNS labels: at most 63 characters, no trailing dash.
*/}}
{{- define "imconnector-consumer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "imconnector-consumer.fullname" -}}
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

{{/* Chart name and version for the helm.sh/chart label ("+" is not allowed in labels). */}}
{{- define "imconnector-consumer.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "imconnector-consumer.labels" -}}
helm.sh/chart: {{ include "imconnector-consumer.chart" . }}
{{ include "imconnector-consumer.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: consumer
app.kubernetes.io/part-of: imconnector
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: immutable, so only name and instance (never the chart version). */}}
{{- define "imconnector-consumer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imconnector-consumer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The label that tells the metrics Service from the release's other Services. */}}
{{- define "imconnector-consumer.metricsServiceLabel" -}}
imconnector-consumer/endpoint: metrics
{{- end }}

{{/* metadata.annotations body shared by every resource (empty when none). */}}
{{- define "imconnector-consumer.annotations" -}}
{{- with .Values.commonAnnotations }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{- define "imconnector-consumer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "imconnector-consumer.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* registry/repository:tag or @digest; floating tags are refused. */}}
{{- define "imconnector-consumer.image" -}}
{{- $repo := .Values.image.repository }}
{{- if .Values.image.registry }}
{{- $repo = printf "%s/%s" (trimSuffix "/" .Values.image.registry) $repo }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" $repo .Values.image.digest }}
{{- else }}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString }}
{{- if has $tag (list "latest" "head" "canary") }}
{{- fail (printf "image.tag %q floats; pin a version or set image.digest" $tag) }}
{{- end }}
{{- printf "%s:%s" $repo $tag }}
{{- end }}
{{- end }}

{{/* The Secret holding the IMCONNECTOR_* secret environment variables. */}}
{{- define "imconnector-consumer.secretName" -}}
{{- default (include "imconnector-consumer.fullname" .) .Values.existingSecret }}
{{- end }}

{{/* Kafka CA bundle: mounted when given inline or as an existing Secret. */}}
{{- define "imconnector-consumer.kafkaCaEnabled" -}}
{{- if or .Values.kafka.tls.caCert .Values.kafka.tls.existingSecret }}true{{ end }}
{{- end }}

{{- define "imconnector-consumer.kafkaCaSecretName" -}}
{{- default (printf "%s-kafka-ca" (include "imconnector-consumer.fullname" .) | trunc 63 | trimSuffix "-") .Values.kafka.tls.existingSecret }}
{{- end }}

{{- define "imconnector-consumer.kafkaCaKey" -}}
{{- if .Values.kafka.tls.existingSecret }}{{ .Values.kafka.tls.caKey }}{{ else }}ca.crt{{ end }}
{{- end }}

{{- define "imconnector-consumer.kafkaCaPath" -}}
/etc/imconnector/kafka-ca/ca.crt
{{- end }}

{{/*
kafka.bootstrapServers as librdkafka and KEDA take it: one comma-separated string, whether
the value is a list or already a string.
*/}}
{{- define "imconnector-consumer.bootstrapServers" -}}
{{- $servers := required "kafka.bootstrapServers is required: set it to host:port[,host:port] (see ci/default-values.yaml)" .Values.kafka.bootstrapServers }}
{{- if kindIs "slice" $servers }}
{{- join "," $servers }}
{{- else }}
{{- $servers }}
{{- end }}
{{- end }}

{{/* Schema Registry CA bundle: mounted when given inline or as an existing Secret. */}}
{{- define "imconnector-consumer.registryCaEnabled" -}}
{{- if or .Values.schemaRegistry.tls.caCert .Values.schemaRegistry.tls.existingSecret }}true{{ end }}
{{- end }}

{{- define "imconnector-consumer.registryCaSecretName" -}}
{{- default (printf "%s-schema-registry-ca" (include "imconnector-consumer.fullname" .) | trunc 63 | trimSuffix "-") .Values.schemaRegistry.tls.existingSecret }}
{{- end }}

{{- define "imconnector-consumer.registryCaKey" -}}
{{- if .Values.schemaRegistry.tls.existingSecret }}{{ .Values.schemaRegistry.tls.caKey }}{{ else }}ca.crt{{ end }}
{{- end }}

{{- define "imconnector-consumer.registryCaPath" -}}
/etc/imconnector/schema-registry-ca/ca.crt
{{- end }}

{{/* The TCP ports of schemaRegistry.url's URLs, comma-separated ("" = no registry). */}}
{{- define "imconnector-consumer.registryPorts" -}}
{{- $ports := list }}
{{- range splitList "," .Values.schemaRegistry.url }}
{{- $url := trim . }}
{{- if $url }}
{{- $port := regexFind ":[0-9]+" (regexReplaceAll "^https?://" $url "") | trimPrefix ":" }}
{{- $ports = append $ports (default (ternary "443" "80" (hasPrefix "https://" $url)) $port) }}
{{- end }}
{{- end }}
{{- join "," $ports }}
{{- end }}

{{/* The service's secrets directory (IMCONNECTOR_SECRETS_DIR): files named like settings. */}}
{{- define "imconnector-consumer.secretsDir" -}}
/etc/imconnector/secrets
{{- end }}

{{/*
Keys of Secrets the chart does not manage that are mounted as files into the secrets
directory, each named after the setting it holds: a YAML list of {secret, key, path}
("" when there are none).
*/}}
{{- define "imconnector-consumer.secretFiles" -}}
{{- $auth := .Values.schemaRegistry.auth }}
{{- $files := list }}
{{- if $auth.existingSecret }}
{{- if eq $auth.method "basic" }}
{{- if $auth.usernameKey }}
{{- $files = append $files (dict "secret" $auth.existingSecret "key" $auth.usernameKey "path" "IMCONNECTOR_SCHEMA_REGISTRY_USERNAME") }}
{{- end }}
{{- $files = append $files (dict "secret" $auth.existingSecret "key" $auth.passwordKey "path" "IMCONNECTOR_SCHEMA_REGISTRY_PASSWORD") }}
{{- else if eq $auth.method "bearer" }}
{{- $files = append $files (dict "secret" $auth.existingSecret "key" $auth.bearerTokenKey "path" "IMCONNECTOR_SCHEMA_REGISTRY_BEARER_TOKEN") }}
{{- end }}
{{- end }}
{{- if $files }}
{{- toYaml $files }}
{{- end }}
{{- end }}

{{/*
Schema Registry values that contradict each other fail the render with the fix, so a pod
never starts with credentials the service would ignore or refuse.
*/}}
{{- define "imconnector-consumer.schemaRegistryCheck" -}}
{{- $sr := .Values.schemaRegistry }}
{{- $auth := $sr.auth }}
{{- $method := $auth.method }}
{{- if and (not $sr.url) (or (ne $method "none") (include "imconnector-consumer.registryCaEnabled" .)) }}
{{- fail "schemaRegistry.auth/tls are set but schemaRegistry.url is empty: set the registry's URL" }}
{{- end }}
{{- if and $auth.existingSecret (or $auth.password $auth.bearerToken) }}
{{- fail (printf "schemaRegistry.auth.existingSecret %q is set, so the inline password/bearerToken would be ignored: put it in that Secret (key %s or %s)" $auth.existingSecret $auth.passwordKey $auth.bearerTokenKey) }}
{{- end }}
{{- if eq $method "none" }}
{{- if or $auth.username $auth.password $auth.bearerToken $auth.existingSecret }}
{{- fail "schemaRegistry.auth has credentials but method is none: set schemaRegistry.auth.method to basic or bearer" }}
{{- end }}
{{- else if eq $method "basic" }}
{{- if not (or $auth.username (and $auth.existingSecret $auth.usernameKey)) }}
{{- fail "schemaRegistry.auth.method basic needs a user: set schemaRegistry.auth.username (or usernameKey with existingSecret)" }}
{{- end }}
{{- if not (or $auth.password $auth.existingSecret) }}
{{- fail "schemaRegistry.auth.method basic needs a password: set schemaRegistry.auth.existingSecret (key passwordKey) or, for tests, schemaRegistry.auth.password" }}
{{- end }}
{{- if $auth.bearerToken }}
{{- fail "schemaRegistry.auth.method basic: remove schemaRegistry.auth.bearerToken (basic auth or a bearer token, not both)" }}
{{- end }}
{{- else if eq $method "bearer" }}
{{- if not (or $auth.bearerToken $auth.existingSecret) }}
{{- fail "schemaRegistry.auth.method bearer needs a token: set schemaRegistry.auth.existingSecret (key bearerTokenKey) or, for tests, schemaRegistry.auth.bearerToken" }}
{{- end }}
{{- if or $auth.username $auth.password $auth.usernameKey }}
{{- fail "schemaRegistry.auth.method bearer: remove schemaRegistry.auth.username/password/usernameKey (basic auth or a bearer token, not both)" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A Prometheus duration ("1m30s", "500ms") in milliseconds. */}}
{{- define "imconnector-consumer.durationMs" -}}
{{- $ms := 0 }}
{{- $factors := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" . -1 }}
{{- $unit := regexFind "(ms|s|m|h)$" . }}
{{- $ms = add $ms (mul (trimSuffix $unit . | int) (index $factors $unit)) }}
{{- end }}
{{- $ms }}
{{- end }}

{{/* terminationGracePeriodSeconds: the service's drain grace plus a margin. */}}
{{- define "imconnector-consumer.terminationGracePeriodSeconds" -}}
{{- add (int .Values.shutdown.graceSeconds) (int .Values.shutdown.marginSeconds) }}
{{- end }}

{{/*
A scalar as an environment variable string. Values files give numbers as float64, which
toString would print as 5.24288e+07; whole numbers print as integers instead.
*/}}
{{- define "imconnector-consumer.scalar" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* Env name of one portal setting: IMCONNECTOR_PORTALS__<PORTAL>__<FIELD>. */}}
{{- define "imconnector-consumer.portalEnv" -}}
{{- printf "IMCONNECTOR_PORTALS__%s__%s" (upper (index . 0)) (index . 1) }}
{{- end }}

{{/*
Non-secret settings as a name -> value YAML map: the typed values first, then `config`.
Both the ConfigMap and its checksum annotation are built from this.
*/}}
{{- define "imconnector-consumer.configEnv" -}}
{{- $v := .Values }}
{{- $env := dict }}
{{- $_ := set $env "IMCONNECTOR_KAFKA__BOOTSTRAP_SERVERS" (include "imconnector-consumer.bootstrapServers" .) }}
{{- /* Dynamic membership for a Deployment's random pod names, static for a StatefulSet's
       stable ones (workload.kind in values.yaml). */}}
{{- $_ := set $env "IMCONNECTOR_KAFKA__STATIC_MEMBERSHIP" (eq $v.workload.kind "StatefulSet") }}
{{- $_ := set $env "IMCONNECTOR_KAFKA__SECURITY_PROTOCOL" $v.kafka.securityProtocol }}
{{- with $v.kafka.sasl.mechanism }}
{{- $_ := set $env "IMCONNECTOR_KAFKA__SASL_MECHANISM" . }}
{{- end }}
{{- if include "imconnector-consumer.kafkaCaEnabled" . }}
{{- $_ := set $env "IMCONNECTOR_KAFKA__SSL_CA_LOCATION" (include "imconnector-consumer.kafkaCaPath" .) }}
{{- end }}
{{- $_ := set $env "IMCONNECTOR_KAFKA__STATISTICS_INTERVAL_MS" $v.kafka.statisticsIntervalMs }}
{{- $librdkafka := dict "auto.offset.reset" $v.kafka.autoOffsetReset }}
{{- range $key, $value := $v.kafka.librdkafka }}
{{- if eq $key "auto.offset.reset" }}
{{- fail "kafka.librdkafka.auto.offset.reset: set kafka.autoOffsetReset instead (KEDA's offsetResetPolicy must agree with it)" }}
{{- end }}
{{- if regexMatch "(?i)(password|secret)" $key }}
{{- fail (printf "kafka.librdkafka.%s looks like a secret; put it in secretEnv (or existingSecret) so it never lands in the ConfigMap" $key) }}
{{- end }}
{{- $_ := set $librdkafka $key (include "imconnector-consumer.scalar" $value) }}
{{- end }}
{{- $_ := set $env "IMCONNECTOR_KAFKA__CONFIG" (toJson $librdkafka) }}
{{- $_ := set $env "IMCONNECTOR_SOURCE_TOPICS" (join "," $v.kafka.topics) }}
{{- $_ := set $env "IMCONNECTOR_GROUP_ID" $v.kafka.groupId }}
{{- include "imconnector-consumer.schemaRegistryCheck" . }}
{{- $sr := $v.schemaRegistry }}
{{- with $sr.url }}
{{- $_ := set $env "IMCONNECTOR_SCHEMA_REGISTRY_URL" . }}
{{- end }}
{{- if and (eq $sr.auth.method "basic") (not (and $sr.auth.existingSecret $sr.auth.usernameKey)) }}
{{- $_ := set $env "IMCONNECTOR_SCHEMA_REGISTRY_USERNAME" $sr.auth.username }}
{{- end }}
{{- with $sr.auth.logicalCluster }}
{{- $_ := set $env "IMCONNECTOR_SCHEMA_REGISTRY_LOGICAL_CLUSTER" . }}
{{- end }}
{{- if include "imconnector-consumer.registryCaEnabled" . }}
{{- $_ := set $env "IMCONNECTOR_SCHEMA_REGISTRY_CA_LOCATION" (include "imconnector-consumer.registryCaPath" .) }}
{{- end }}
{{- if include "imconnector-consumer.secretFiles" . }}
{{- $_ := set $env "IMCONNECTOR_SECRETS_DIR" (include "imconnector-consumer.secretsDir" .) }}
{{- end }}
{{- $_ := set $env "IMCONNECTOR_HTTP_PORT" $v.httpPort }}
{{- $_ := set $env "IMCONNECTOR_SHUTDOWN_GRACE_S" $v.shutdown.graceSeconds }}
{{- $_ := set $env "IMCONNECTOR_LOG_FORMAT" $v.logging.format }}
{{- $_ := set $env "IMCONNECTOR_LOG_LEVEL" $v.logging.level }}
{{- range $portal, $p := $v.portals }}
{{- $_ := set $env (include "imconnector-consumer.portalEnv" (list $portal "REST_URL")) $p.restUrl }}
{{- $_ := set $env (include "imconnector-consumer.portalEnv" (list $portal "CLIENT_ID")) $p.clientId }}
{{- with $p.oauthUrl }}
{{- $_ := set $env (include "imconnector-consumer.portalEnv" (list $portal "OAUTH_URL")) . }}
{{- end }}
{{- if hasKey $p "rateDrain" }}
{{- $_ := set $env (include "imconnector-consumer.portalEnv" (list $portal "RATE_DRAIN")) $p.rateDrain }}
{{- end }}
{{- if hasKey $p "rateBurst" }}
{{- $_ := set $env (include "imconnector-consumer.portalEnv" (list $portal "RATE_BURST")) $p.rateBurst }}
{{- end }}
{{- if hasKey $p "rateShare" }}
{{- $_ := set $env (include "imconnector-consumer.portalEnv" (list $portal "RATE_SHARE")) $p.rateShare }}
{{- end }}
{{- with $p.memberId }}
{{- $_ := set $env (include "imconnector-consumer.portalEnv" (list $portal "MEMBER_ID")) . }}
{{- end }}
{{- with $p.applicationTokenFile }}
{{- $_ := set $env (include "imconnector-consumer.portalEnv" (list $portal "APPLICATION_TOKEN_FILE")) . }}
{{- end }}
{{- end }}
{{- include "imconnector-consumer.inboundEnv" (list $env $v) }}
{{- range $name, $value := $v.config }}
{{- if regexMatch "(?i)(PASSWORD|SECRET|TOKEN)" $name }}
{{- fail (printf "config.%s looks like a secret; put it in secretEnv (or existingSecret) so it never lands in the ConfigMap" $name) }}
{{- end }}
{{- $_ := set $env $name $value }}
{{- end }}
{{- range $name := keys $env | sortAlpha }}
{{ $name }}: {{ include "imconnector-consumer.scalar" (index $env $name) | quote }}
{{- end }}
{{- end }}

{{/*
Secret settings as a name -> value YAML map (plain text; the Secret encodes them).
Refuses inline secrets when existingSecret is set, so nobody believes they were applied.
*/}}
{{- define "imconnector-consumer.secretEnv" -}}
{{- $v := .Values }}
{{- $env := dict }}
{{- with $v.kafka.sasl.username }}
{{- $_ := set $env "IMCONNECTOR_KAFKA__SASL_USERNAME" . }}
{{- end }}
{{- with $v.kafka.sasl.password }}
{{- $_ := set $env "IMCONNECTOR_KAFKA__SASL_PASSWORD" . }}
{{- end }}
{{- range $portal, $p := $v.portals }}
{{- range $field, $envField := dict "clientSecret" "CLIENT_SECRET" "accessToken" "ACCESS_TOKEN" "refreshToken" "REFRESH_TOKEN" "applicationToken" "APPLICATION_TOKEN" }}
{{- with index $p $field }}
{{- $_ := set $env (include "imconnector-consumer.portalEnv" (list $portal $envField)) . }}
{{- end }}
{{- end }}
{{- end }}
{{- $auth := $v.schemaRegistry.auth }}
{{- if not $auth.existingSecret }}
{{- if and (eq $auth.method "basic") $auth.password }}
{{- $_ := set $env "IMCONNECTOR_SCHEMA_REGISTRY_PASSWORD" $auth.password }}
{{- end }}
{{- if and (eq $auth.method "bearer") $auth.bearerToken }}
{{- $_ := set $env "IMCONNECTOR_SCHEMA_REGISTRY_BEARER_TOKEN" $auth.bearerToken }}
{{- end }}
{{- end }}
{{- range $name, $value := $v.secretEnv }}
{{- $_ := set $env $name $value }}
{{- end }}
{{- if and $v.existingSecret (gt (len $env) 0) }}
{{- fail (printf "existingSecret %q is set, so inline secrets (%s) would be ignored: put them in that Secret instead" $v.existingSecret (keys $env | sortAlpha | join ", ")) }}
{{- end }}
{{- range $name := keys $env | sortAlpha }}
{{ $name }}: {{ include "imconnector-consumer.scalar" (index $env $name) | quote }}
{{- end }}
{{- end }}

{{/* KEDA's sasl mode for librdkafka's sasl.mechanism. */}}
{{- define "imconnector-consumer.kedaSasl" -}}
{{- $m := .Values.kafka.sasl.mechanism }}
{{- if eq $m "PLAIN" }}plaintext
{{- else if eq $m "SCRAM-SHA-256" }}scram_sha256
{{- else if eq $m "SCRAM-SHA-512" }}scram_sha512
{{- else if eq $m "OAUTHBEARER" }}oauthbearer
{{- end }}
{{- end }}

{{/* true when Kafka traffic is TLS-encrypted. */}}
{{- define "imconnector-consumer.kafkaTls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end }}
{{- end }}

{{/* KEDA's maxReplicaCount: the requested ceiling, never above the partition count. */}}
{{- define "imconnector-consumer.kedaMaxReplicas" -}}
{{- $partitions := int .Values.kafka.partitions }}
{{- $max := int .Values.keda.maxReplicaCount }}
{{- if or (eq $max 0) (gt $max $partitions) }}{{ $partitions }}{{ else }}{{ $max }}{{ end }}
{{- end }}

{{/* A probe: the custom one when given, else httpGet on the http port without `enabled`. */}}
{{- define "imconnector-consumer.probe" -}}
{{- $probe := index . 0 }}
{{- $custom := index . 1 }}
{{- $path := index . 2 }}
{{- if $custom }}
{{- toYaml $custom }}
{{- else }}
httpGet:
  path: {{ $path }}
  port: http
{{ omit $probe "enabled" | toYaml }}
{{- end }}
{{- end }}

{{/* KEDA needs credentials when Kafka uses SASL or a private CA. */}}
{{- define "imconnector-consumer.kedaTriggerAuthNeeded" -}}
{{- if or .Values.kafka.sasl.mechanism (include "imconnector-consumer.kafkaCaEnabled" .) }}true{{ end }}
{{- end }}

{{/* The TriggerAuthentication the kafka triggers use ("" = none needed). */}}
{{- define "imconnector-consumer.kedaAuthenticationRef" -}}
{{- if .Values.keda.authenticationRef }}
{{- .Values.keda.authenticationRef }}
{{- else if include "imconnector-consumer.kedaTriggerAuthNeeded" . }}
{{- include "imconnector-consumer.fullname" . }}
{{- end }}
{{- end }}
