{{/*
Bitrix24's operator events into Kafka (docs/inbound-events.md): inbound.mode is "off",
"pull" (the service pulls each portal's offline event queue; no ingress) or "push" (the
service's http port takes Bitrix24's event POSTs at inbound.push.path).
*/}}

{{/* Adds the inbound settings to the ConfigMap's env map; called as (list $env .Values). */}}
{{- define "imconnector-consumer.inboundEnv" -}}
{{- $env := index . 0 }}
{{- $in := (index . 1).inbound }}
{{- if ne $in.mode "off" }}
{{- $_ := set $env "IMCONNECTOR_INBOUND__TOPIC" $in.topic }}
{{- end }}
{{- if eq $in.mode "pull" }}
{{- $_ := set $env "IMCONNECTOR_INBOUND__PULL_IN_SERVICE" "true" }}
{{- end }}
{{- if eq $in.mode "push" }}
{{- $_ := set $env "IMCONNECTOR_INBOUND__PUSH_ON_SERVICE_PORT" "true" }}
{{- $_ := set $env "IMCONNECTOR_INBOUND__PUSH_PATH" $in.push.path }}
{{- end }}
{{- end }}

{{/* Name of the Service in front of the push handler. */}}
{{- define "imconnector-consumer.inboundServiceName" -}}
{{- printf "%s-events" (include "imconnector-consumer.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/* The NetworkPolicy ingress rule that lets Bitrix24's POSTs (through the ingress
controller) reach the http port in push mode; empty otherwise. */}}
{{- define "imconnector-consumer.inboundIngressRule" -}}
{{- if eq .Values.inbound.mode "push" }}
# Bitrix24's event POSTs (push mode), usually through the ingress controller
- ports:
    - port: http
      protocol: TCP
  {{- with .Values.inbound.push.from }}
  from:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
