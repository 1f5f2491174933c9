"""`down`'s iptables and ipset cleanup on the machine's real iptables and ipsets, for a
network and sets of the test's own (the node's may be in use by the session's cluster while
this runs)."""

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


def ipset(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ipset", *args], capture_output=True, text=True)


def test_policy_sets_are_destroyed_once_their_rules_are_gone_and_others_are_left() -> None:
    """As kube-router leaves them: hash:ip sets of its pods' and peers' addresses that its
    chains' rules match on. `down` removes the chains first, then the sets."""
    tag = uuid.uuid4().hex[:8].upper()
    source, destination, other = f"TTIT{tag}-SRC-a", f"TTIT{tag}-DST-b", f"TTIT{tag}-OTHER"
    prefixes = (f"TTIT{tag}-SRC-", f"TTIT{tag}-DST-")
    chain = f"TTIT{tag}-FW"
    for name in (source, destination, other):
        ipset("create", name, "hash:ip", "timeout", "0").check_returncode()
        ipset("add", name, "10.99.0.9").check_returncode()
    filter_ = ["iptables", "-t", "filter"]
    subprocess.run([*filter_, "-N", chain], check=True)
    subprocess.run([*filter_, "-A", chain, "-m", "set", "--match-set", source, "src",
                    "-m", "set", "--match-set", destination, "dst", "-j", "ACCEPT"],
                   check=True)  # fmt: skip
    try:
        assert sorted(node.policy_sets(prefixes)) == sorted([source, destination])
        node.remove_policy_sets(prefixes)  # still matched on by a rule: left, not an error
        assert sorted(node.policy_sets(prefixes)) == sorted([source, destination])
        subprocess.run([*filter_, "-F", chain], check=True)  # what remove_kube_chains does
        node.remove_policy_sets(prefixes)
        assert node.policy_sets(prefixes) == []
        assert other in ipset("list", "-name").stdout.split(), "not ours to remove"
    finally:
        subprocess.run([*filter_, "-F", chain], check=False)
        subprocess.run([*filter_, "-X", chain], check=False)
        for name in (source, destination, other):
            ipset("destroy", name)


def test_kube_routers_hooks_are_jumps_that_down_removes() -> None:
    """kube-router hooks INPUT, FORWARD and OUTPUT into its chains with a comment;
    remove_kube_chains deletes such jumps, then every KUBE-* chain."""
    rule = shlex.split(
        '-A FORWARD -m comment --comment "kube-router netpol - TEMCG2JMHZYE7H7T" '
        "-j KUBE-ROUTER-FORWARD"
    )
    assert node.jumps_into_kube_chain(rule)
    pod_chain = shlex.split("-A KUBE-ROUTER-FORWARD -d 10.244.0.9/32 -j KUBE-POD-FW-ABC")
    assert not node.jumps_into_kube_chain(pod_chain)  # flushed with its chain instead
