{{/* Chart name, overridable. */}}
{{- define "waymark.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already holds the chart name. */}}
{{- define "waymark.fullname" -}}
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

{{- define "waymark.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "waymark.selectorLabels" -}}
app.kubernetes.io/name: {{ include "waymark.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "waymark.labels" -}}
helm.sh/chart: {{ include "waymark.chart" . }}
{{ include "waymark.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: waymark
{{- end }}

{{/*
The judge (judge.mode=kafka): its own name and labels. Its
app.kubernetes.io/name differs from the edge's, so the edge's selectors
(Deployment, Service, PDB, anti-affinity) never take in a judge pod, and the
edge's labels stay what they were before the judge existed (a Deployment's
selector cannot change in an upgrade).
*/}}
{{- define "waymark.judgeEnabled" -}}
{{- if eq .Values.judge.mode "kafka" }}true{{ end }}
{{- end }}
{{- define "waymark.judgeFullname" -}}
{{- printf "%s-judge" (include "waymark.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}
{{- define "waymark.judgeSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-judge" (include "waymark.name" . | trunc 57 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
{{- define "waymark.judgeLabels" -}}
helm.sh/chart: {{ include "waymark.chart" . }}
{{ include "waymark.judgeSelectorLabels" . }}
app.kubernetes.io/component: judge
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: waymark
{{- end }}

{{- define "waymark.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "waymark.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "waymark.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the key ring, and the key in it. */}}
{{- define "waymark.keysSecret" -}}
{{- default (printf "%s-keys" (include "waymark.fullname" .)) .Values.keys.existingSecret }}
{{- end }}
{{- define "waymark.keysSecretKey" -}}
{{- if .Values.keys.existingSecret }}{{ .Values.keys.existingSecretKey }}{{ else }}keys{{ end }}
{{- end }}

{{/* The Secret the chart creates for values given inline (admin token, IP hash key). */}}
{{- define "waymark.inlineSecret" -}}
{{- printf "%s-secrets" (include "waymark.fullname" .) }}
{{- end }}

{{- define "waymark.scannerRulesConfigMap" -}}
{{- default (printf "%s-scanner-rules" (include "waymark.fullname" .)) .Values.scannerRules.existingConfigMap }}
{{- end }}
{{- define "waymark.scannerRulesKey" -}}
{{- if .Values.scannerRules.existingConfigMap }}{{ .Values.scannerRules.existingConfigMapKey }}{{ else }}scanners.toml{{ end }}
{{- end }}
{{- define "waymark.hasScannerRules" -}}
{{- if or .Values.scannerRules.rules .Values.scannerRules.existingConfigMap }}true{{ end }}
{{- end }}

{{/* StatefulSet when the data directory is persistent, Deployment otherwise. */}}
{{- define "waymark.workloadKind" -}}
{{- if .Values.persistence.enabled }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/* Whether the kubelet's preStop sleep action exists (Kubernetes >= 1.30). */}}
{{- define "waymark.preStopSleep" -}}
{{- if and (gt (int .Values.preStopSleepSeconds) 0) (semverCompare ">=1.30-0" .Capabilities.KubeVersion.Version) }}true{{ end }}
{{- end }}

{{/*
Refuse values that would deploy something broken, with a message that says
what to change. values.schema.json catches wrong types and shapes; these are
the rules that span several values.
*/}}
{{- define "waymark.validate" -}}
{{- if and (not .Values.keys.existingSecret) (not .Values.keys.ring) }}
{{- fail "waymark: no key ring. Create one with `waymark keygen`, store it with `kubectl create secret generic waymark-keys --from-file=keys=keys.txt` and set keys.existingSecret=waymark-keys (or put the ring in keys.ring)." }}
{{- end }}
{{- if and .Values.keys.existingSecret .Values.keys.ring }}
{{- fail "waymark: set keys.existingSecret or keys.ring, not both." }}
{{- end }}
{{- if and .Values.admin.token.existingSecret .Values.admin.token.value }}
{{- fail "waymark: set admin.token.existingSecret or admin.token.value, not both." }}
{{- end }}
{{- if and (or .Values.admin.token.existingSecret .Values.admin.token.value) (not .Values.admin.enabled) }}
{{- fail "waymark: an admin token is set but admin.enabled is false." }}
{{- end }}
{{- if and .Values.privacy.ipHashKey.existingSecret .Values.privacy.ipHashKey.value }}
{{- fail "waymark: set privacy.ipHashKey.existingSecret or privacy.ipHashKey.value, not both." }}
{{- end }}
{{- if and (eq .Values.privacy.ipMode "hashed") (not (or .Values.privacy.ipHashKey.existingSecret .Values.privacy.ipHashKey.value)) }}
{{- fail "waymark: privacy.ipMode=hashed needs privacy.ipHashKey (existingSecret or value)." }}
{{- end }}
{{- if and .Values.scannerRules.rules .Values.scannerRules.existingConfigMap }}
{{- fail "waymark: set scannerRules.rules or scannerRules.existingConfigMap, not both." }}
{{- end }}
{{- if and (or .Values.geoip.asnDb .Values.geoip.cityDb) (not .Values.geoip.volume) }}
{{- fail "waymark: geoip.asnDb/cityDb name files in geoip.volume, which is empty." }}
{{- end }}
{{- if and .Values.ingress.enabled (not .Values.ingress.hosts) }}
{{- fail "waymark: ingress.enabled needs at least one host in ingress.hosts." }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.admin.enabled) }}
{{- fail "waymark: metrics.serviceMonitor needs admin.enabled (metrics are served on the admin port)." }}
{{- end }}
{{- if and .Values.metrics.podAnnotations (not .Values.admin.enabled) }}
{{- fail "waymark: metrics.podAnnotations needs admin.enabled (metrics are served on the admin port)." }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (eq (toString .Values.podDisruptionBudget.minAvailable) "") (eq (toString .Values.podDisruptionBudget.maxUnavailable) "") }}
{{- fail "waymark: podDisruptionBudget needs maxUnavailable or minAvailable." }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "waymark: autoscaling.minReplicas is above autoscaling.maxReplicas." }}
{{- end }}
{{- if include "waymark.judgeEnabled" . }}
{{- if not .Values.kafka.brokers }}
{{- fail "waymark: judge.mode=kafka needs kafka.brokers (the edges publish hits to Kafka and the judges read them from it)." }}
{{- end }}
{{- if eq .Values.kafka.hitsTopic .Values.kafka.topic }}
{{- fail (printf "waymark: kafka.hitsTopic=%s is also kafka.topic; the hits need a topic of their own." .Values.kafka.hitsTopic) }}
{{- end }}
{{- if not (kindIs "invalid" .Values.judge.threads) }}
{{- fail "waymark: judge.threads is for judge.mode=local; with kafka the judges are the judge Deployment (judge.replicaCount or judge.autoscaling)." }}
{{- end }}
{{- $judges := ternary .Values.judge.autoscaling.maxReplicas .Values.judge.replicaCount .Values.judge.autoscaling.enabled | int }}
{{- if gt $judges (int .Values.kafka.hitsPartitions) }}
{{- fail (printf "waymark: %d judges (%s) but kafka.hitsPartitions=%d: a judge without a partition of the hits topic does nothing and never becomes ready. Run at most as many judges as the topic has partitions." $judges (ternary "judge.autoscaling.maxReplicas" "judge.replicaCount" .Values.judge.autoscaling.enabled) (int .Values.kafka.hitsPartitions)) }}
{{- end }}
{{- if and .Values.judge.autoscaling.enabled (gt (int .Values.judge.autoscaling.minReplicas) (int .Values.judge.autoscaling.maxReplicas)) }}
{{- fail "waymark: judge.autoscaling.minReplicas is above judge.autoscaling.maxReplicas." }}
{{- end }}
{{- if and .Values.judge.podDisruptionBudget.enabled (eq (toString .Values.judge.podDisruptionBudget.minAvailable) "") (eq (toString .Values.judge.podDisruptionBudget.maxUnavailable) "") }}
{{- fail "waymark: judge.podDisruptionBudget needs maxUnavailable or minAvailable." }}
{{- end }}
{{- end }}
{{- /* Shutdown must fit in the grace period, or the kubelet SIGKILLs a pod still writing events. */}}
{{- $needMs := add (mul (int .Values.preStopSleepSeconds) 1000) (int .Values.shutdownGraceMs) }}
{{- if .Values.kafka.brokers }}
{{- $needMs = add $needMs (int .Values.kafka.flushTimeoutMs) }}
{{- end }}
{{- if le (mul (int .Values.terminationGracePeriodSeconds) 1000) $needMs }}
{{- fail (printf "waymark: terminationGracePeriodSeconds=%d is too short: shutdown needs preStopSleepSeconds + shutdownGraceMs%s = %d ms; give it more than that." (int .Values.terminationGracePeriodSeconds) (ternary " + kafka.flushTimeoutMs" "" (not (empty .Values.kafka.brokers))) (int $needMs)) }}
{{- end }}
{{- end }}

{{/*
The pod template, shared by the edge (Deployment or StatefulSet) and the
judge's Deployment: include it with (dict "root" $ "judge" BOOL). The judge
runs `waymark judge` with the edge's config, keys, secrets and volumes (it
opens the tokens again and produces the events), but no public listener:
its probes are on the admin port, and its data directory is always an
emptyDir (it commits the hits topic's offsets only once their events are
acknowledged, so a lost spool is judged again, never lost).
*/}}
{{- define "waymark.podTemplate" -}}
{{- $judge := .judge -}}
{{- $root := .root -}}
{{- with .root -}}
{{- $selector := include "waymark.selectorLabels" . }}
{{- if $judge }}{{ $selector = include "waymark.judgeSelectorLabels" . }}{{ end -}}
metadata:
  labels:
    {{- if $judge }}
    {{- include "waymark.judgeLabels" . | nindent 4 }}
    {{- else }}
    {{- include "waymark.labels" . | nindent 4 }}
    {{- end }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Roll the pods when the config, or a Secret the chart writes, changes.
    # The scanner rules are left out: waymark reloads them live.
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") . | sha256sum }}
    checksum/secrets: {{ include (print $root.Template.BasePath "/secret.yaml") . | sha256sum }}
    {{- if .Values.metrics.podAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: "9090"
    prometheus.io/path: /metrics
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "waymark.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  enableServiceLinks: false
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: waymark
      image: {{ include "waymark.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args: [{{ ternary "judge" "serve" $judge | quote }}]
      ports:
        {{- if not $judge }}
        - name: http
          containerPort: 8080
          protocol: TCP
        {{- end }}
        {{- if or .Values.admin.enabled $judge }}
        - name: admin
          containerPort: 9090
          protocol: TCP
        {{- end }}
      env:
        - name: WAYMARK_CONFIG
          value: /etc/waymark/config/waymark.toml
        {{- if not $judge }}
        - name: WAYMARK_LISTEN
          value: "0.0.0.0:8080"
        {{- end }}
        {{- if or .Values.admin.enabled $judge }}
        - name: WAYMARK_ADMIN_LISTEN
          value: "0.0.0.0:9090"
        {{- end }}
        {{- if $judge }}
        {{- /* The judge has no /v1 API: it gets no admin token. */}}
        {{- else if .Values.admin.token.existingSecret }}
        - name: WAYMARK_ADMIN_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ .Values.admin.token.existingSecret }}
              key: {{ .Values.admin.token.existingSecretKey }}
        {{- else if .Values.admin.token.value }}
        - name: WAYMARK_ADMIN_TOKEN
          valueFrom:
            secretKeyRef:
              name: {{ include "waymark.inlineSecret" . }}
              key: admin-token
        {{- end }}
        - name: WAYMARK_KEYS_FILE
          value: /etc/waymark/keys/{{ include "waymark.keysSecretKey" . }}
        - name: WAYMARK_DATA_DIR
          value: /var/lib/waymark
        - name: WAYMARK_SPOOL_DIR
          value: /var/lib/waymark/spool
        - name: WAYMARK_SPOOL_MAX_BYTES
          value: {{ .Values.spool.maxBytes | int64 | quote }}
        - name: WAYMARK_SHUTDOWN_GRACE_MS
          value: {{ .Values.shutdownGraceMs | int64 | quote }}
        - name: WAYMARK_LOG_FORMAT
          value: {{ .Values.log.format | quote }}
        - name: WAYMARK_LOG
          value: {{ .Values.log.filter | quote }}
        {{- with .Values.publicUrl }}
        - name: WAYMARK_PUBLIC_URL
          value: {{ . | quote }}
        {{- end }}
        {{- with .Values.trustedProxies }}
        - name: WAYMARK_TRUSTED_PROXIES
          value: {{ join "," . | quote }}
        {{- end }}
        - name: WAYMARK_IP_MODE
          value: {{ .Values.privacy.ipMode | quote }}
        - name: WAYMARK_KEEP_USER_AGENT
          value: {{ .Values.privacy.keepUserAgent | quote }}
        {{- if .Values.privacy.ipHashKey.existingSecret }}
        - name: WAYMARK_IP_HASH_KEY
          valueFrom:
            secretKeyRef:
              name: {{ .Values.privacy.ipHashKey.existingSecret }}
              key: {{ .Values.privacy.ipHashKey.existingSecretKey }}
        {{- else if .Values.privacy.ipHashKey.value }}
        - name: WAYMARK_IP_HASH_KEY
          valueFrom:
            secretKeyRef:
              name: {{ include "waymark.inlineSecret" . }}
              key: ip-hash-key
        {{- end }}
        {{- if include "waymark.hasScannerRules" . }}
        - name: WAYMARK_SCANNER_RULES
          value: /etc/waymark/scanners/{{ include "waymark.scannerRulesKey" . }}
        {{- end }}
        {{- with .Values.geoip.asnDb }}
        - name: WAYMARK_ASN_DB
          value: /var/lib/waymark-geoip/{{ . }}
        {{- end }}
        {{- with .Values.geoip.cityDb }}
        - name: WAYMARK_CITY_DB
          value: /var/lib/waymark-geoip/{{ . }}
        {{- end }}
        {{- if .Values.kafka.brokers }}
        - name: WAYMARK_KAFKA_BROKERS
          value: {{ .Values.kafka.brokers | quote }}
        - name: WAYMARK_KAFKA_TOPIC
          value: {{ .Values.kafka.topic | quote }}
        - name: WAYMARK_KAFKA_TOPIC_PER_TYPE
          value: {{ .Values.kafka.topicPerType | quote }}
        - name: WAYMARK_KAFKA_FLUSH_TIMEOUT_MS
          value: {{ .Values.kafka.flushTimeoutMs | int64 | quote }}
        {{- $props := list }}
        {{- if .Values.kafka.propertiesSecret.name }}
        {{- /* Kubernetes expands $(VAR) from variables defined earlier in the list. */}}
        - name: KAFKA_SECRET_PROPERTIES
          valueFrom:
            secretKeyRef:
              name: {{ .Values.kafka.propertiesSecret.name }}
              key: {{ .Values.kafka.propertiesSecret.key }}
        {{- $props = append $props "$(KAFKA_SECRET_PROPERTIES)" }}
        {{- end }}
        {{- range $k, $v := .Values.kafka.properties }}
        {{- $props = append $props (printf "%s=%v" $k $v) }}
        {{- end }}
        {{- if $props }}
        - name: WAYMARK_KAFKA_PROPERTIES
          value: {{ join "," $props | quote }}
        {{- end }}
        {{- end }}
        {{- if include "waymark.judgeEnabled" . }}
        - name: WAYMARK_JUDGE
          value: kafka
        - name: WAYMARK_KAFKA_HITS_TOPIC
          value: {{ .Values.kafka.hitsTopic | quote }}
        - name: WAYMARK_KAFKA_JUDGE_GROUP
          value: {{ .Values.kafka.judgeGroup | quote }}
        - name: WAYMARK_KAFKA_HITS_PARTITIONS
          value: {{ .Values.kafka.hitsPartitions | int64 | quote }}
        {{- else if not (kindIs "invalid" .Values.judge.threads) }}
        - name: WAYMARK_JUDGE_THREADS
          value: {{ .Values.judge.threads | int64 | quote }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      startupProbe:
        httpGet:
          path: /healthz
          port: {{ ternary "admin" "http" $judge }}
        {{- toYaml .Values.startupProbe | nindent 8 }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: {{ ternary "admin" "http" $judge }}
        {{- toYaml .Values.livenessProbe | nindent 8 }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: {{ ternary "admin" "http" $judge }}
        {{- toYaml .Values.readinessProbe | nindent 8 }}
      {{- /* Nothing routes traffic to a judge: no sleep for load balancers to catch up. */}}
      {{- if and (not $judge) (include "waymark.preStopSleep" .) }}
      lifecycle:
        preStop:
          sleep:
            seconds: {{ .Values.preStopSleepSeconds }}
      {{- end }}
      resources:
        {{- toYaml (ternary .Values.judge.resources .Values.resources $judge) | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: data
          mountPath: /var/lib/waymark
        - name: tmp
          mountPath: /tmp
        - name: config
          mountPath: /etc/waymark/config
          readOnly: true
        # Whole-directory mounts, never subPath: Kubernetes then updates the
        # files in place, and waymark recognises the secret mount's ..data
        # layout (its mode is the kubelet's, not 0600).
        - name: keys
          mountPath: /etc/waymark/keys
          readOnly: true
        {{- if include "waymark.hasScannerRules" . }}
        - name: scanner-rules
          mountPath: /etc/waymark/scanners
          readOnly: true
        {{- end }}
        {{- if .Values.geoip.volume }}
        - name: geoip
          mountPath: /var/lib/waymark-geoip
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    {{- if or $judge (not .Values.persistence.enabled) }}
    - name: data
      emptyDir:
        {{- with .Values.persistence.emptyDir.sizeLimit }}
        sizeLimit: {{ . }}
        {{- end }}
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    - name: config
      configMap:
        name: {{ include "waymark.fullname" . }}
    - name: keys
      secret:
        secretName: {{ include "waymark.keysSecret" . }}
        defaultMode: 0400
        items:
          - key: {{ include "waymark.keysSecretKey" . }}
            path: {{ include "waymark.keysSecretKey" . }}
    {{- if include "waymark.hasScannerRules" . }}
    - name: scanner-rules
      configMap:
        name: {{ include "waymark.scannerRulesConfigMap" . }}
        items:
          - key: {{ include "waymark.scannerRulesKey" . }}
            path: {{ include "waymark.scannerRulesKey" . }}
    {{- end }}
    {{- with .Values.geoip.volume }}
    - name: geoip
      {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.affinity }}
  affinity:
    {{- toYaml .Values.affinity | nindent 4 }}
  {{- else if eq .Values.podAntiAffinityPreset "soft" }}
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- $selector | nindent 16 }}
  {{- else if eq .Values.podAntiAffinityPreset "hard" }}
  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        - topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- $selector | nindent 14 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- range . }}
    {{- $constraint := deepCopy . }}
    {{- if not $constraint.labelSelector }}
    {{- $_ := set $constraint "labelSelector" (dict "matchLabels" ($selector | fromYaml)) }}
    {{- end }}
    - {{ toYaml $constraint | nindent 6 | trim }}
    {{- end }}
  {{- end }}
{{- end }}
{{- end }}
