"""tti_gateway: one HTTP endpoint in front of every TextToImageModel.

It routes each request by the model it names to the least-busy ready pod of that model,
holds requests for a model that has no ready pod yet (scale from zero), and answers its
own errors in the server's envelope. It never imports torch: it runs in the operator's image.
"""

__version__ = "0.1.0"
