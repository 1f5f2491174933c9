{{/*
What the operator does in a namespace it serves, and nothing more (docs/operator.md
lists the calls; tests/chart checks this grants nothing that list lacks, and that each
kind gets exactly the verbs its row in tti_operator/kinds.py implies: list and watch;
create and patch when applied; delete when the operator deletes it). kopf lists and
watches the models; the operator watches the children and writes them with server-side
apply (PATCH, which needs `create` when the object is new) and the status with a
merge patch, and the replicas of autoscaled models with a merge patch of the scale
subresource. It reads no single object by name but a fetch pod's or a model pod's log, deletes only
the models' NetworkPolicies once networkPolicies.enabled is turned off, the model cache's
fetch Jobs and expired claims and the adapters' Jobs and claims no longer wanted (owner references let the garbage collector remove a
model's children) and never touches anything cluster-scoped: kopf's CRD and namespace
scanning is off.
The cluster tests run the real operator with exactly these rules.
*/}}
{{- define "tti-operator.rules" -}}
# The models: kopf's watch (its event handlers write nothing on the model itself).
- apiGroups: ["tti.dev"]
  resources: ["texttoimagemodels"]
  verbs: ["list", "watch"]
# The status the operator publishes (Ready, endpoint, conditions).
- apiGroups: ["tti.dev"]
  resources: ["texttoimagemodels/status"]
  verbs: ["patch"]
# The autoscaler sets the replicas of models with spec.autoscaling, as an HPA does.
- apiGroups: ["tti.dev"]
  resources: ["texttoimagemodels/scale"]
  verbs: ["patch"]
# Children carry owner references with blockOwnerDeletion, which clusters that run
# the OwnerReferencesPermissionEnforcement admission plugin (OpenShift) allow only
# to whoever may update the owner's finalizers.
- apiGroups: ["tti.dev"]
  resources: ["texttoimagemodels/finalizers"]
  verbs: ["update"]
# Each model's Deployment and Service: watched, and applied.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["list", "watch", "create", "patch"]
# Each model's NetworkPolicy: watched, applied, and deleted when the operator is told to
# make none (networkPolicies.enabled: false).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# Each model's adapters manifest (ConfigMap NAME-adapters): watched, and applied.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["list", "watch", "create", "patch"]
# Pod state feeds the status (Unschedulable, CrashLoopBackOff, ImagePullBackOff).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# The model cache: a claim per entry, annotated with what its fetch found and deleted
# once unused for the retention; the fetch Job, deleted once read; the Job's pods, whose
# last log lines say how far a fetch has got. A model's adapters: its claim and one fetch
# Job per hub file (annotated with the commit found; deleted once no adapter wants it, or
# to try a failed fetch again); a ready model pod's log says which adapters it loaded.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["list", "watch", "create", "patch", "delete"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Kubernetes Events on the models (created, updated, failed).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}


{{/*
What the gateway does in a namespace it serves (docs/gateway.md lists the calls; the
cluster tests run it under exactly these rules): it lists and watches the models and
their Services' EndpointSlices, and wakes a model at zero through the scale
subresource. It never reads Secrets, Pods or anything cluster-scoped.
*/}}
{{- define "tti-operator.gatewayRules" -}}
- apiGroups: ["tti.dev"]
  resources: ["texttoimagemodels"]
  verbs: ["list", "watch"]
- apiGroups: ["tti.dev"]
  resources: ["texttoimagemodels/scale"]
  verbs: ["patch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["list", "watch"]
{{- end }}


{{/*
The reviews behind gateway.identity (docs/gateway.md#rbac): who a bearer token belongs to
(TokenReview) and whether that caller may `generate` with a model (SubjectAccessReview).
Both are cluster-scoped: a ClusterRole, bound cluster-wide, in every install mode.
*/}}
{{- define "tti-operator.gatewayReviewRules" -}}
- apiGroups: ["authentication.k8s.io"]
  resources: ["tokenreviews"]
  verbs: ["create"]
- apiGroups: ["authorization.k8s.io"]
  resources: ["subjectaccessreviews"]
  verbs: ["create"]
{{- end }}
