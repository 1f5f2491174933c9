"""Tooling around the server, none of it on the serving path.

`client` is the `tti` command, `demo` is `make demo-server`, and `tiny_model` writes
the tiny random-weight SDXL pipeline behind `tti-server make-tiny-model`.
"""
