{{/*
The pod template shared by the Deployment and the StatefulSet (workload.kind): metadata and
spec, to be placed under `spec.template` with nindent 4.
*/}}
{{- define "imconnector-consumer.podTemplate" -}}
metadata:
  annotations:
    # Settings are read once at start: a changed ConfigMap or Secret must roll the pods.
    checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
    # Secrets the chart does not manage are covered by name only: restart after rotating them.
    checksum/secret: {{ list (include (print $.Template.BasePath "/secret.yaml") .) (include (print $.Template.BasePath "/kafka-ca-secret.yaml") .) (include (print $.Template.BasePath "/schema-registry-ca-secret.yaml") .) (printf "existingSecret=%s" .Values.existingSecret) (include "imconnector-consumer.secretFiles" .) | join "\n" | sha256sum }}
    {{- with .Values.commonAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- include "imconnector-consumer.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "imconnector-consumer.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automount }}
  # Service links would inject <SERVICE>_PORT=tcp://... variables; a Service named
  # imconnector-* would then collide with the service's IMCONNECTOR_* settings.
  enableServiceLinks: false
  {{- with .Values.image.pullSecrets }}
  imagePullSecrets:
    {{- range . }}
    - name: {{ . }}
    {{- end }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  # The service drains for shutdown.graceSeconds on SIGTERM; the margin covers the final
  # transaction commit and leaving the group.
  terminationGracePeriodSeconds: {{ include "imconnector-consumer.terminationGracePeriodSeconds" . }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: consumer
      image: {{ include "imconnector-consumer.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      {{- with .Values.args }}
      args:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: http
          containerPort: {{ .Values.httpPort }}
          protocol: TCP
      envFrom:
        - configMapRef:
            name: {{ include "imconnector-consumer.fullname" . }}
        - secretRef:
            name: {{ include "imconnector-consumer.secretName" . }}
      {{- $statefulSet := eq .Values.workload.kind "StatefulSet" }}
      {{- if or $statefulSet .Values.extraEnvVars }}
      env:
        {{- if $statefulSet }}
        # The stable pod name (<fullname>-<ordinal>) identifies the replica: its static
        # group.instance.id and its transactional id survive restarts.
        - name: IMCONNECTOR_INSTANCE_ID
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- end }}
        {{- with .Values.extraEnvVars }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- end }}
      {{- if .Values.startupProbe.enabled }}
      startupProbe:
        {{- include "imconnector-consumer.probe" (list .Values.startupProbe .Values.customStartupProbe "/healthz") | trim | nindent 8 }}
      {{- end }}
      {{- if .Values.livenessProbe.enabled }}
      livenessProbe:
        {{- include "imconnector-consumer.probe" (list .Values.livenessProbe .Values.customLivenessProbe "/healthz") | trim | nindent 8 }}
      {{- end }}
      {{- if .Values.readinessProbe.enabled }}
      readinessProbe:
        {{- include "imconnector-consumer.probe" (list .Values.readinessProbe .Values.customReadinessProbe "/readyz") | trim | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.containerSecurityContext | nindent 8 }}
      {{- with .Values.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      volumeMounts:
        - name: tmp
          mountPath: /tmp
        {{- if include "imconnector-consumer.kafkaCaEnabled" . }}
        - name: kafka-ca
          mountPath: {{ include "imconnector-consumer.kafkaCaPath" . | dir }}
          readOnly: true
        {{- end }}
        {{- if include "imconnector-consumer.registryCaEnabled" . }}
        - name: schema-registry-ca
          mountPath: {{ include "imconnector-consumer.registryCaPath" . | dir }}
          readOnly: true
        {{- end }}
        {{- if include "imconnector-consumer.secretFiles" . }}
        - name: secrets
          mountPath: {{ include "imconnector-consumer.secretsDir" . }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    # The root filesystem is read-only; /tmp is the only writable path.
    - name: tmp
      emptyDir:
        {{- with .Values.tmpVolume.sizeLimit }}
        sizeLimit: {{ . }}
        {{- end }}
    {{- if include "imconnector-consumer.kafkaCaEnabled" . }}
    - name: kafka-ca
      secret:
        secretName: {{ include "imconnector-consumer.kafkaCaSecretName" . }}
        defaultMode: 0440
        items:
          - key: {{ include "imconnector-consumer.kafkaCaKey" . }}
            path: {{ include "imconnector-consumer.kafkaCaPath" . | base }}
    {{- end }}
    {{- if include "imconnector-consumer.registryCaEnabled" . }}
    - name: schema-registry-ca
      secret:
        secretName: {{ include "imconnector-consumer.registryCaSecretName" . }}
        defaultMode: 0440
        items:
          - key: {{ include "imconnector-consumer.registryCaKey" . }}
            path: {{ include "imconnector-consumer.registryCaPath" . | base }}
    {{- end }}
    {{- with include "imconnector-consumer.secretFiles" . | fromYamlArray }}
    # Keys of Secrets managed elsewhere, as files named after the settings they hold
    # (IMCONNECTOR_SECRETS_DIR): secrets stay out of the environment.
    - name: secrets
      projected:
        defaultMode: 0440
        sources:
          {{- range . }}
          - secret:
              name: {{ .secret }}
              items:
                - key: {{ .key }}
                  path: {{ .path }}
          {{- end }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- $selector := include "imconnector-consumer.selectorLabels" . | fromYaml }}
    {{- range .Values.topologySpreadConstraints }}
    {{- $constraint := deepCopy . }}
    {{- if not (hasKey $constraint "labelSelector") }}
    {{- $_ := set $constraint "labelSelector" (dict "matchLabels" $selector) }}
    {{- end }}
    - {{ toYaml $constraint | nindent 6 | trim }}
    {{- end }}
  {{- end }}
{{- end }}
