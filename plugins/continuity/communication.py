"""Incident communication: the policy's matrix applied, and the templates rendered strictly.

A template is a Jinja file under `include/templates/` named by the policy (`communication.templates`).
Rendering is strict: a field the template uses and the caller did not give is an error naming the
field and the template, raised before anything is sent. Nothing here imports Airflow.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from continuity.policy import Policy
from continuity.project import include_dir


class TemplateError(ValueError):
    """A template cannot be rendered: the message names the template and the missing or broken field."""


def _environment(directory: Path) -> jinja2.Environment:
    # StrictUndefined: a missing field fails instead of printing nothing; no autoescape, these are
    # plain-text messages (the status page escapes what it shows).
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(directory)), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, autoescape=False)


def template_file(policy: Policy, name: str) -> str:
    if policy.communication is None:
        raise TemplateError("the policy has no communication section: no templates to render")
    try:
        return policy.communication.templates[name]
    except KeyError:
        raise TemplateError(f"no template {name!r} in communication.templates (known: "
                            f"{sorted(policy.communication.templates)})") from None


def required_fields(policy: Policy, name: str, *, directory: Path | None = None) -> set[str]:
    """The fields template `name` uses (the caller must give every one)."""
    directory = directory or include_dir() / "templates"
    file = template_file(policy, name)
    try:
        source = (directory / file).read_text()
    except OSError as exc:
        raise TemplateError(f"template {name} ({directory / file}): cannot read it: {exc.strerror}") from None
    return set(meta.find_undeclared_variables(_environment(directory).parse(source)))


def render(policy: Policy, name: str, fields: Mapping[str, Any], *, directory: Path | None = None) -> str:
    """Template `name` with `fields`; TemplateError naming every missing field before anything is sent."""
    directory = directory or include_dir() / "templates"
    missing = sorted(required_fields(policy, name, directory=directory) - set(fields) - {"test"})
    if missing:
        raise TemplateError(f"template {name} ({template_file(policy, name)}): missing field"
                            f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}; nothing was sent")
    try:
        return _environment(directory).get_template(template_file(policy, name)).render(**{"test": False, **fields})
    except jinja2.UndefinedError as exc:  # e.g. an attribute of a given field
        raise TemplateError(f"template {name} ({template_file(policy, name)}): {exc.message}; nothing was sent") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template {name} ({template_file(policy, name)}): {exc}") from None
