"""tti_server: the FastAPI inference server every TextToImageModel pod runs."""

__version__ = "0.1.0"
