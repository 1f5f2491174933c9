"""Model backends: the only code that touches torch and diffusers."""
