"""tti_operator: reconciles TextToImageModel resources into GPU Deployments and Services.

A kopf operator, and kopf's part is small: it runs the process (the `tti-operator` command,
`cli.main`, the one start-up path, calls `kopf.run`), logs in, serves the liveness
endpoint, and delivers each model event to one event handler (`handlers.model_event`),
with its diff-base storage patched for speed (`handlers.LeanDiffBaseStorage`). Everything
else is the operator's own, in the shape of Kubernetes' controllers (`controller.py` wires
it): the children's watches are its own informer (`informer.py`), not kopf's; a keyed work
queue (`workqueue.py`) hands each model to the reconcile (`reconciler.py`), which applies
the children the pure builders build (`builders.py`, kinds as data in `kinds.py`) and
publishes the status computed from them (`status.py`). The autoscaler is a pure policy
(`autoscale_policy.py`) and the loop that feeds it (`autoscale_loop.py`).

docs/operator.md describes it in full. This module imports nothing, so importing one
submodule costs only what that submodule imports.
"""
