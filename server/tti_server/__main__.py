"""`python -m tti_server` is `tti-server`."""

from tti_server.cli import main

main()
