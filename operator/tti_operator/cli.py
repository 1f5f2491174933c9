"""The `tti-operator` command (placeholder until the operator lands)."""

import sys


def main() -> int:
    print("tti-operator: the operator is not implemented yet", file=sys.stderr)
    return 2
