"""Node control, service control and the lab's commands are found by name: the policy's name resolves to its
implementation, and a name with none (or none installed) is an error naming the setting, before anything acts."""

from __future__ import annotations

import pytest

from continuity.policy import registry
from continuity.failover.nodecontrol import NodeControlError, node_control_for
from continuity.policy.loading import load_policy
from continuity.failover.servicecontrol import ServiceControlError, service_control_for
from continuity.failover.sshcontrol import SshNodeControl, SshServiceControl


def test_the_policy_names_resolve_to_their_implementations() -> None:
    from continuity_lab.controls import SandboxNodeControl, SandboxServiceControl

    assert registry.implementation("node_control", "sandbox", setting="s") is SandboxNodeControl
    assert registry.implementation("node_control", "ssh", setting="s") is SshNodeControl
    assert registry.implementation("service_control", "sandbox", setting="s") is SandboxServiceControl
    assert registry.implementation("service_control", "ssh", setting="s") is SshServiceControl
    assert registry.available("commands", "lab") and not registry.available("commands", "nothing")


def test_an_unknown_name_is_refused_naming_the_setting_and_what_exists() -> None:
    with pytest.raises(registry.ImplementationNotFound,
                       match=r"topology.node_control 'patroni' has no implementation here \(known: sandbox, ssh\)"):
        registry.implementation("node_control", "patroni", setting="topology.node_control")


def test_a_name_whose_package_is_not_installed_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BUILTIN, "node_control", {"agent": "continuity_agent_not_installed.nodes:Agent"})
    assert not registry.available("node_control", "agent")
    with pytest.raises(registry.ImplementationNotFound,
                       match=r"topology.node_control 'agent' is implemented by continuity_agent_not_installed.nodes:"
                             r"Agent, which is not installed on this machine .*HINT: install the package"):
        registry.implementation("node_control", "agent", setting="topology.node_control")


def test_ssh_control_without_connections_is_refused_before_anything_acts() -> None:
    policy = load_policy()
    ssh_nodes = policy.model_copy(update={"topology": policy.topology.model_copy(update={"node_control": "ssh"})})
    with pytest.raises(NodeControlError, match="no SSH connections were given; HINT: run the failover from Airflow"):
        node_control_for(ssh_nodes)
    ssh_services = policy.model_copy(update={"application": policy.application.model_copy(
        update={"service_control": "ssh"})})
    with pytest.raises(ServiceControlError, match="no SSH connections were given; HINT: run it from Airflow"):
        service_control_for(ssh_services)


def test_sandbox_control_outside_a_sandbox_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTINUITY_SANDBOX", raising=False)
    policy = load_policy()
    with pytest.raises(NodeControlError, match=r"\$CONTINUITY_SANDBOX is not set"):
        node_control_for(policy.model_copy(update={"topology": policy.topology.model_copy(
            update={"node_control": "sandbox"})}))
    with pytest.raises(ServiceControlError, match="CONTINUITY_SANDBOX is not set. HINT"):
        service_control_for(policy.model_copy(update={"application": policy.application.model_copy(
            update={"service_control": "sandbox"})}))
