"""What marks an object as this operator's: the label its models' children and its cache
entries carry, and its watches select on."""

MANAGED_BY = "tti-operator"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
