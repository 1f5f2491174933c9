"""`down`'s iptables cleanup on the machine's real iptables, for a network of the test's own
(the node's network may be in use by the session's cluster while this runs)."""

from __future__ import annotations

import shlex
import subprocess
import uuid

from localcluster import node

NETWORK = "tti-cleanup-test"


def iptables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["iptables", "-t", "nat", *args], capture_output=True, text=True)


def add_masquerade_chain(chain: str, network: str, address: str, jump: bool = True) -> None:
    """As the bridge plugin's ipMasq does for a pod: a chain, and the rule that jumps to it
    (none where a DEL cut short removed the rule and not the chain)."""
    comment = f'name: "{network}" id: "{uuid.uuid4().hex}"'
    iptables("-N", chain).check_returncode()
    iptables("-A", chain, "-d", "10.99.0.0/16", "-m", "comment", "--comment", comment,
             "-j", "ACCEPT").check_returncode()  # fmt: skip
    if jump:
        iptables("-A", "POSTROUTING", "-s", address, "-m", "comment", "--comment", comment,
                 "-j", chain).check_returncode()  # fmt: skip


def test_a_pod_chain_a_cut_short_cni_del_left_is_removed_with_its_jump() -> None:
    ours, orphan, other = (f"CNI-{uuid.uuid4().hex[:24]}" for _ in range(3))
    add_masquerade_chain(ours, NETWORK, "10.99.0.5/32")
    add_masquerade_chain(orphan, NETWORK, "10.99.0.6/32", jump=False)
    add_masquerade_chain(other, "another-network", "10.99.0.7/32")
    try:
        node.remove_pod_chains(NETWORK)
        chains = node.iptables_chains("nat")
        assert ours not in chains and orphan not in chains
        assert ours not in iptables("-S", "POSTROUTING").stdout
        assert other in chains, "another network's chain is not ours to remove"
    finally:
        for chain in (ours, orphan, other):
            for rule in iptables("-S", "POSTROUTING").stdout.splitlines():
                if rule.endswith(f"-j {chain}"):
                    iptables("-D", *shlex.split(rule)[1:])
            iptables("-F", chain)
            iptables("-X", chain)
