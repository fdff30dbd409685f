"""Implementations found by name: what the policy names (`topology.node_control`, `application.service_control`)
and what the development lab adds to the command line, without the product importing them.

The product never imports the lab (`continuity_lab`: the sandbox, the control plane, the sample application):
the lab is one implementation among others, chosen by configuration. A name resolves, first, through the
installed packages' entry points of the group `continuity.<kind>` (how a deployment adds its own, e.g. a node
control through Patroni's REST API), then through the built-in table below.
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.metadata import entry_points
from typing import Any

BUILTIN: dict[str, dict[str, str]] = {
    "node_control": {"sandbox": "continuity_lab.controls:SandboxNodeControl",
                     "ssh": "continuity.failover.sshcontrol:SshNodeControl"},
    "service_control": {"sandbox": "continuity_lab.controls:SandboxServiceControl",
                        "ssh": "continuity.failover.sshcontrol:SshServiceControl"},
    # What a machine with the lab on it knows: the sandbox's storage and keyring for the emergency CLI, and
    # the lab's own commands (`continuity sandbox ...`, `continuity run`).
    "local_deployment": {"sandbox": "continuity_lab.sandbox:Sandbox"},
    "commands": {"lab": "continuity_lab.cli:add_commands"},
}


class ImplementationNotFound(LookupError):
    """A name the configuration gives has no implementation on this machine; the message says which and why."""


def _target(kind: str, name: str) -> str | None:
    for entry in entry_points(group=f"continuity.{kind}"):
        if entry.name == name:
            return entry.value
    return BUILTIN.get(kind, {}).get(name)


def available(kind: str, name: str) -> bool:
    """Whether `name` of `kind` can be loaded here (its module is installed), without importing it."""
    target = _target(kind, name)
    if target is None:
        return False
    try:
        return importlib.util.find_spec(target.split(":", 1)[0]) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def implementation(kind: str, name: str, *, setting: str) -> Any:
    """The object `name` of `kind` stands for; `setting` (where the name came from) is in every error."""
    target = _target(kind, name)
    if target is None:
        known = sorted({*BUILTIN.get(kind, {}), *(e.name for e in entry_points(group=f"continuity.{kind}"))})
        raise ImplementationNotFound(f"{setting} {name!r} has no implementation here (known: {', '.join(known)})")
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ImplementationNotFound(
            f"{setting} {name!r} is implemented by {target}, which is not installed on this machine ({exc}); "
            f"HINT: install the package that provides {module_name}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ImplementationNotFound(f"{setting} {name!r}: {module_name} has no {attribute}") from None


def build(kind: str, name: str, *, setting: str, error: type[Exception], policy: Any, **collaborators: Any) -> Any:
    """The implementation `name` of `kind`, made for `policy` (its `from_policy(policy, **collaborators)`); a name
    with none here raises `error` (the caller's own failure class) naming `setting`."""
    try:
        factory = implementation(kind, name, setting=setting)
    except ImplementationNotFound as exc:
        raise error(str(exc)) from exc
    return factory.from_policy(policy, **collaborators)
