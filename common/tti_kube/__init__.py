"""The Kubernetes client and the list+watch that the operator and the gateway share."""
