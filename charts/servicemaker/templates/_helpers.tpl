{{/* The chart name, or nameOverride. */}}
{{- define "servicemaker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: fullnameOverride, or <release>-<chart> (just <release> when it holds the chart name). */}}
{{- define "servicemaker.fullname" -}}
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

{{/* A name of at most 63 characters: <fullname>-<suffix>, shortened with a hash of the whole when longer. */}}
{{- define "servicemaker.resourceName" -}}
{{- $full := printf "%s-%s" (include "servicemaker.fullname" .root) .suffix }}
{{- if le (len $full) 63 }}
{{- $full }}
{{- else }}
{{- printf "%s-%s" ($full | trunc 56 | trimSuffix "-") (sha256sum $full | trunc 6) }}
{{- end }}
{{- end }}

{{- define "servicemaker.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels; pass (dict "root" $ "component" "deploy|triton|repository" "repository" $repo) */}}
{{- define "servicemaker.labels" -}}
helm.sh/chart: {{ include "servicemaker.chart" .root }}
{{ include "servicemaker.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: servicemaker
{{- end }}

{{- define "servicemaker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "servicemaker.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- with .repository }}
servicemaker.io/repository: {{ .id }}
{{- end }}
{{- end }}

{{/*
The model repositories, as a JSON list of {"id", "product"}: one per GPU product (id: the product lower-cased,
runs of other characters as "-", hashed when longer than 30), or [{"id": "cpu", "product": ""}] in CPU mode.
Fails on values the schema cannot express.
*/}}
{{- define "servicemaker.repositories" -}}
{{- $repos := list }}
{{- $seen := dict }}
{{- range $product := .Values.gpu.products }}
{{- $id := $product | lower | regexReplaceAll "[^a-z0-9]+" "-" | trimAll "-" }}
{{- if gt (len $id) 30 }}
{{- $id = printf "%s-%s" ($id | trunc 23 | trimSuffix "-") (sha256sum $product | trunc 6) }}
{{- end }}
{{- if hasKey $seen $id }}
{{- fail (printf "gpu.products: %q and %q give the same repository folder %q; list each GPU product once" (get $seen $id) $product $id) }}
{{- end }}
{{- $_ := set $seen $id $product }}
{{- $repos = append $repos (dict "id" $id "product" $product) }}
{{- end }}
{{- if not $repos }}
{{- if eq .Values.deploy.target "tensorrt" }}
{{- fail "deploy.target=tensorrt needs GPUs: list them in gpu.products (values of the nvidia.com/gpu.product node label), or deploy for the CPU with deploy.target=onnxruntime-python or onnxruntime" }}
{{- end }}
{{- $repos = list (dict "id" "cpu" "product" "") }}
{{- end }}
{{- toJson $repos }}
{{- end }}

{{- define "servicemaker.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "servicemaker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "servicemaker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "servicemaker.claimName" -}}
{{- default (include "servicemaker.resourceName" (dict "root" . "suffix" "models")) .Values.modelRepository.existingClaim }}
{{- end }}

{{/* The environment variable that carries the key of RMIR number n. */}}
{{- define "servicemaker.keyVar" -}}
{{- printf "SVC_RMIR_KEY_%d" . }}
{{- end }}

{{/*
svc-deploy's arguments for one repository: RMIRs (URL or file in rmirVolume, ":env:VAR" where keyed), the
repository folder, the target, the cache, -f, --json, extra arguments. Pass (dict "root" $ "repository" $repo).
*/}}
{{- define "servicemaker.deployArgs" -}}
{{- $v := .root.Values }}
{{- $args := list }}
{{- range $i, $rmir := $v.deploy.rmirs }}
{{- $src := "" }}
{{- if and $rmir.url $rmir.file }}
{{- fail (printf "deploy.rmirs[%d]: give url or file, not both" $i) }}
{{- else if $rmir.url }}
{{- $src = $rmir.url }}
{{- else if $rmir.file }}
{{- if not (or $v.deploy.rmirVolume.secretName $v.deploy.rmirVolume.configMapName) }}
{{- fail (printf "deploy.rmirs[%d].file=%s: set deploy.rmirVolume.secretName or configMapName to the Secret or ConfigMap that holds it" $i $rmir.file) }}
{{- end }}
{{- $src = printf "%s/%s" $v.deploy.rmirVolume.mountPath $rmir.file }}
{{- else }}
{{- fail (printf "deploy.rmirs[%d]: no RMIR given; set url (s3://bucket/model.rmir) or file (a name in deploy.rmirVolume)" $i) }}
{{- end }}
{{- if $rmir.keySecret }}
{{- $src = printf "%s:env:%s" $src (include "servicemaker.keyVar" $i) }}
{{- end }}
{{- $args = append $args $src }}
{{- end }}
{{- $args = append $args (printf "%s/%s" $v.modelRepository.mountPath .repository.id) }}
{{- $args = concat $args (list "--target" $v.deploy.target) }}
{{- if not $v.cache.enabled }}
{{- $args = append $args "--no-cache" }}
{{- else if $v.cache.url }}
{{- $args = concat $args (list "--cache" $v.cache.url) }}
{{- end }}
{{- if $v.deploy.force }}
{{- $args = append $args "-f" }}
{{- end }}
{{- $args = append $args "--json" }}
{{- toJson (concat $args $v.deploy.extraArgs) }}
{{- end }}
