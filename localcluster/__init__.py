"""The local Kubernetes cluster and the demo that `make` runs for users (not tests).

`launcher` starts and stops the cluster (a real control plane, a real node that runs pods,
simulated GPU nodes), `node` runs the real node on the configuration `node_config` builds,
`images` builds the images it runs, `processes` finds and stops what they started, `util`
holds what they share, and `demo` is `make demo`. Run them from the repository root as
`python3 -m localcluster.NAME`; they use the standard library only, so they need no virtual
environment. The tests import them.
"""
