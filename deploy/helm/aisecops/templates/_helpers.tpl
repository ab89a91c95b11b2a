{{/* Names, labels and the pieces several templates share. */}}

{{- define "aisecops.fullname" -}}
{{- if contains "aisecops" .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-aisecops" .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "aisecops.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: aisecops
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "component" "authz") */}}
{{- define "aisecops.selector" -}}
app.kubernetes.io/name: aisecops
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "aisecops.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag -}}
{{- end -}}

{{/* Cluster DNS names the components dial. */}}
{{- define "aisecops.xdsHost" -}}
{{- printf "%s-xds.%s.svc.cluster.local" (include "aisecops.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- define "aisecops.authzHeadlessHost" -}}
{{- printf "%s-authz-headless.%s.svc.cluster.local" (include "aisecops.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- define "aisecops.redisHost" -}}
{{- printf "%s-redis.%s.svc.cluster.local" (include "aisecops.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- define "aisecops.otelHost" -}}
{{- printf "%s-otel-collector.%s.svc.cluster.local" (include "aisecops.fullname" .) .Release.Namespace -}}
{{- end -}}

{{/* Ports: one place, so Services, probes and arguments agree. */}}
{{- define "aisecops.port.grpc" -}}9191{{- end -}}
{{- define "aisecops.port.http" -}}8181{{- end -}}
{{- define "aisecops.port.xds" -}}18000{{- end -}}
{{- define "aisecops.port.xdsHTTP" -}}8182{{- end -}}

{{/*
The routes file as rendered: the values' routes with authz.address defaulting
to this release's headless authz Service and, with tls.enabled, authz.tls
naming the egress Envoy's client certificate (the routes file's authz.tls of
the mTLS listeners work).
*/}}
{{- define "aisecops.routes" -}}
{{- $r := deepCopy .Values.routes -}}
{{- $authz := default (dict) $r.authz -}}
{{- if not $authz.address -}}
{{- $_ := set $authz "address" (printf "%s:%s" (include "aisecops.authzHeadlessHost" .) (include "aisecops.port.grpc" .)) -}}
{{- end -}}
{{- if and .Values.tls.enabled (not $authz.tls) -}}
{{- /* Envoy's client side of the mTLS call to authz: the files the egress Envoy mounts from tls.egressSecret. */ -}}
{{- $_ := set $authz "tls" (dict "ca_file" "/etc/envoy/tls/ca.crt" "cert_file" "/etc/envoy/tls/tls.crt" "key_file" "/etc/envoy/tls/tls.key") -}}
{{- end -}}
{{- $_ := set $r "authz" $authz -}}
{{- toYaml $r -}}
{{- end -}}

{{/*
TLS arguments, in one place so their names can follow the binary's flags
(those of the mTLS listeners work: --authz-*, --xds-*, --http-*,
--xds-client-* towards the control plane, --insecure-listeners otherwise).
(dict "ctx" $ "role" "authz"|"xds"|"xdsClient"|"http")
*/}}
{{- define "aisecops.tlsArgs" -}}
{{- $d := "/etc/aisecops/tls" -}}
{{- if eq .role "authz" }}
- --authz-tls-cert={{ $d }}/tls.crt
- --authz-tls-key={{ $d }}/tls.key
- --authz-client-ca={{ $d }}/ca.crt
{{- else if eq .role "xds" }}
- --xds-tls-cert={{ $d }}/tls.crt
- --xds-tls-key={{ $d }}/tls.key
- --xds-client-ca={{ $d }}/ca.crt
{{- else if eq .role "xdsClient" }}
- --xds-client-cert={{ $d }}/tls.crt
- --xds-client-key={{ $d }}/tls.key
- --xds-server-ca={{ $d }}/ca.crt
{{- else if eq .role "http" }}
- --http-tls-cert={{ $d }}/tls.crt
- --http-tls-key={{ $d }}/tls.key
{{- end }}
{{- end -}}

{{- define "aisecops.httpScheme" -}}
{{- if .Values.tls.enabled }}HTTPS{{ else }}HTTP{{ end -}}
{{- end -}}

{{/* The Redis arguments and environment of the authz container. */}}
{{- define "aisecops.redisArgs" -}}
{{- if .Values.redis.deploy }}
- --redis-url=redis://{{ include "aisecops.redisHost" . }}:6379/0
{{- else if .Values.redis.external.clusterNodes }}
- --redis-cluster={{ join "," .Values.redis.external.clusterNodes }}
{{- else if not .Values.redis.external.urlSecret.name }}
{{- fail "redis: set redis.deploy=true, redis.external.urlSecret.name or redis.external.clusterNodes (run state must be shared by the authz replicas)" }}
{{- end }}
{{- end -}}

{{/* (dict "ctx" $ "service" "aisecops-authz") */}}
{{- define "aisecops.otelEnv" -}}
{{- if .ctx.Values.otelCollector.enabled }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: http://{{ include "aisecops.otelHost" .ctx }}:4317
- name: OTEL_SERVICE_NAME
  value: {{ .service }}
{{- end }}
{{- end -}}
