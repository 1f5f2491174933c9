"""Tooling around the server, none of it on the serving path.

`client` is the `tti` command, `demo` is `make demo-server`, and `tiny_model` writes
the tiny random-weight pipelines (SDXL, SD3, Flux) behind `tti-server make-tiny-model`.
"""
