"""Loading the policy file: YAML (and a deployment's overlay) into the models of `continuity.policy.model`, then
the cross-references pydantic cannot see (names that must exist elsewhere in the file, schedules, objects, the
application). Every problem is reported as `FILE: key.path: expected ..., got ...`."""

from __future__ import annotations

import functools
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from continuity.policy.model import Policy, PolicyError, format_duration
from continuity.policy.project import policy_overlay_path, policy_path


def _describe_error(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required key is missing"
    if kind == "extra_forbidden":
        return "unknown key (a typo? see include/policy.yaml for the known keys)"
    message = error["msg"]
    if kind == "value_error":
        # Our own validators already say "expected ..., got ...".
        return message.removeprefix("Value error, ")
    return f"{message[0].lower()}{message[1:]}, got {error.get('input')!r}"


def _dotted(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _check_references(policy: Policy) -> list[str]:
    """Cross-references pydantic cannot see: names that must exist elsewhere in the file."""
    problems: list[str] = []
    for key, function in policy.business_functions.items():
        if function.tier not in policy.tiers:
            problems.append(f"business_functions.{key}.tier: expected one of {sorted(policy.tiers)}, got {function.tier!r}")
        for i, category in enumerate(function.data_categories):
            if category not in policy.data_categories:
                problems.append(
                    f"business_functions.{key}.data_categories[{i}]: expected one of "
                    f"{sorted(policy.data_categories)}, got {category!r}"
                )
    for where, objectives in [(f"business_functions.{k}", (f.rto, f.rpo)) for k, f in policy.business_functions.items()] + [
        (f"data_categories.{k}", (c.rpo,)) for k, c in policy.data_categories.items()
    ]:
        for name, objective in zip(("rto", "rpo") if len(objectives) == 2 else ("rpo",), objectives):
            if objective.maximum < objective.target:
                problems.append(f"{where}.{name}.maximum: expected at least the target ({format_duration(objective.target)}), got {format_duration(objective.maximum)}")
    for key, function in policy.business_functions.items():
        tier = policy.tiers.get(function.tier)
        if tier is not None and function.rto.maximum > tier.maximum:
            # A function's outage beyond its tier's maximum would be reported within its own bound.
            problems.append(f"business_functions.{key}.rto.maximum: expected at most its tier {function.tier}'s "
                            f"maximum ({format_duration(tier.maximum)}), got {format_duration(function.rto.maximum)}")
    for key, tier in policy.tiers.items():
        if tier.maximum < tier.target:
            problems.append(f"tiers.{key}.maximum: expected at least the target ({format_duration(tier.target)}), got {format_duration(tier.maximum)}")

    control = policy.deployment.control_region
    if control is not None and control not in policy.regions:
        problems.append(f"deployment.control_region: expected one of the policy's regions {policy.regions}, got "
                        f"{control!r}")
    if policy.control_region == policy.topology.primary_region:
        problems.append(f"deployment.control_region: expected a region other than the primary region "
                        f"({policy.topology.primary_region}): the orchestrator must survive the loss of the region "
                        f"it fails away from")
    nodes = policy.topology.nodes
    primaries = [n.name for n in nodes if n.role == "primary"]
    if len(primaries) != 1:
        problems.append(f"topology.nodes: expected exactly one node with role 'primary', got {len(primaries)} ({primaries})")
    seen: set[str] = set()
    for i, node in enumerate(nodes):
        if node.name in seen:
            problems.append(f"topology.nodes[{i}].name: expected a unique node name, got {node.name!r} twice")
        seen.add(node.name)
        if node.role == "primary" and node.synchronous:
            problems.append(f"topology.nodes[{i}].synchronous: only a standby can be synchronous, got true on the primary")
    standby = policy.backups.full.backup_from_standby
    if standby is not None and standby not in {n.name for n in policy.topology.standbys}:
        problems.append(f"backups.full.backup_from_standby: expected the name of a standby node, got {standby!r}")

    names: set[str] = set()
    for i, location in enumerate(policy.storage.locations):
        where = f"storage.locations[{i}]"
        if location.name in names:
            problems.append(f"{where}.name: expected a unique location name, got {location.name!r} twice")
        names.add(location.name)
        if location.kind == "s3" and not (location.bucket and location.conn_id):
            problems.append(f"{where}: a location of kind 's3' needs 'bucket' and 'conn_id'")
        if location.kind == "file" and not location.path:
            problems.append(f"{where}: a location of kind 'file' needs 'path'")
    required_regions = {loc.region for loc in policy.storage.locations if loc.required}
    if not any(loc.required for loc in policy.storage.locations):
        problems.append("storage.locations: expected at least one location with required: true")
    elif required_regions == {policy.topology.primary_region}:
        problems.append(
            f"storage.locations: expected a required location outside the primary region "
            f"{policy.topology.primary_region} (a regional disaster would take every copy)"
        )
    problems += _check_schedules(policy)
    for name in policy.validation.restore_test.locations:
        if name not in names:
            problems.append(f"validation.restore_test.locations.{name}: expected one of the storage locations "
                            f"{sorted(names)}")
    if policy.objects is not None:
        problems += _check_objects(policy)
    if policy.application is not None:
        problems += _check_application(policy)
    if policy.communication is not None:
        communication = policy.communication
        for name, group in communication.stakeholder_groups.items():
            if group.audience not in communication.audiences:
                problems.append(f"communication.stakeholder_groups.{name}.audience: expected one of "
                                f"{sorted(communication.audiences)}, got {group.audience!r}")
        for name, audience in communication.audiences.items():
            if audience.external and audience.approval == "none":
                problems.append(f"communication.audiences.{name}.approval: an external audience needs approval "
                                f"('approver' or 'ceo'), got 'none'")
            if "in_app_banner" in audience.methods and not communication.banners:
                problems.append(f"communication.audiences.{name}.methods: in_app_banner has no sender: "
                                f"communication.banners names no bucket for the application's banner")
            if "email" in audience.methods and not audience.recipients.get("email"):
                problems.append(f"communication.audiences.{name}.methods: email has no recipients: "
                                f"expected addresses in communication.audiences.{name}.recipients.email")
    return problems


@functools.lru_cache(maxsize=256)
def cron_period(expression: str) -> timedelta:
    """The longest gap between two runs of a cron schedule (over a year of runs from a fixed start, or its
    first 2,000 runs for a schedule that runs more often than every 4 1/2 hours)."""
    from croniter import croniter

    it = croniter(expression, datetime(2026, 1, 1, tzinfo=timezone.utc))
    previous = it.get_next(datetime)
    longest = timedelta(0)
    limit = previous + timedelta(days=366)
    for _ in range(2000):
        if previous >= limit:
            break
        current = it.get_next(datetime)
        longest = max(longest, current - previous)
        previous = current
        if longest > timedelta(days=366):
            break
    return longest


# The validation cadence (section 4.1) each DAG's schedule must keep: list, item -> (DAG, longest period).
_CADENCE = {"daily": timedelta(days=1), "weekly": timedelta(days=7), "monthly": timedelta(days=31)}
_CADENCE_DAGS = {"database_integrity": "dr_backup_validation", "file_checksums": "dr_backup_validation",
                 "cross_region_verification": "dr_backup_validation", "restore_test_sample": "dr_restore_test",
                 "disaster_recovery_drill": "dr_drill"}


def _check_schedules(policy: Policy) -> list[str]:
    from croniter import croniter

    problems: list[str] = []
    expressions = {**policy.schedules, "dr_full_backup": policy.backups.full.schedule,
                   **({"dr_object_replication": policy.objects.schedule} if policy.objects else {})}
    for dag_id, expression in expressions.items():
        where = {"dr_full_backup": "backups.full.schedule", "dr_object_replication": "objects.schedule"}.get(
            dag_id, f"schedules.{dag_id}")
        if not croniter.is_valid(expression):
            problems.append(f"{where}: expected a cron expression like '0 5 * * 0', got {expression!r}")
    for cadence, items in (("daily", policy.validation.daily), ("weekly", policy.validation.weekly),
                           ("monthly", policy.validation.monthly)):
        for item in items:
            dag_id = _CADENCE_DAGS.get(item)
            expression = expressions.get(dag_id) if dag_id else None
            if expression is None or not croniter.is_valid(expression):
                continue
            period = cron_period(expression)
            if period > _CADENCE[cadence]:
                problems.append(f"schedules.{dag_id}: validation.{cadence} lists {item}, but {expression!r} runs only "
                                f"every {format_duration(period)}")
    return problems


def _check_objects(policy: Policy) -> list[str]:
    problems: list[str] = []
    assert policy.objects is not None
    seen: dict[tuple[str, str], str] = {}
    for name, category in policy.objects.categories.items():
        where = f"objects.categories.{name}"
        if name not in policy.data_categories:
            problems.append(f"{where}: expected one of the data_categories {sorted(policy.data_categories)}, got {name!r}")
        retention = category.retention
        if not retention.indefinite and retention.standard is None:
            problems.append(f"{where}.retention: expected 'standard' (and optionally archive_class/archive_until) "
                            f"or 'indefinite: true'")
        if retention.archive_class and not retention.archive_until:
            problems.append(f"{where}.retention.archive_until: required with archive_class")
        if retention.archive_until and retention.standard and retention.archive_until < retention.standard:
            problems.append(f"{where}.retention.archive_until: expected at least standard "
                            f"({format_duration(retention.standard)}), got {format_duration(retention.archive_until)}")
        for i, bucket in enumerate([category.source, *category.replicas]):
            label = "source" if i == 0 else f"replicas[{i - 1}]"
            if (bucket.bucket, bucket.prefix) in seen:
                problems.append(f"{where}.{label}: bucket {bucket.bucket!r} prefix {bucket.prefix!r} is already "
                                f"{seen[(bucket.bucket, bucket.prefix)]}")
            seen[(bucket.bucket, bucket.prefix)] = f"{where}.{label}"
        if not any(r.region != category.source.region for r in category.replicas):
            problems.append(f"{where}.replicas: expected a replica outside the source's region "
                            f"{category.source.region} (a regional disaster would take every copy)")
        rpo = policy.data_categories[name].rpo if name in policy.data_categories else None
        if rpo is not None and policy.objects.every_version_listing > rpo.maximum:
            problems.append(f"objects.every_version_listing: expected at most the RPO maximum of {name} "
                            f"({format_duration(rpo.maximum)}): versions only that listing finds would be older, "
                            f"got {format_duration(policy.objects.every_version_listing)}")
        if rpo is not None and category.interval > rpo.target:
            problems.append(f"{where}.interval: expected at most the category's RPO target "
                            f"({format_duration(rpo.target)}), got {format_duration(category.interval)}")
        reference = category.database_reference
        if reference is not None and reference.database not in policy.topology.databases:
            problems.append(f"{where}.database_reference.database: expected one of {policy.topology.databases}, "
                            f"got {reference.database!r}")
    return problems


def _check_application(policy: Policy) -> list[str]:
    application = policy.application
    assert application is not None
    problems: list[str] = []
    topology = policy.topology
    for region in (topology.primary_region, topology.dr_region):
        if region not in application.regions:
            problems.append(f"application.regions: expected an entry for region {region} (the topology's "
                            f"{'primary' if region == topology.primary_region else 'DR'} region)")
    for region in application.regions:
        if region not in (topology.primary_region, topology.dr_region):
            problems.append(f"application.regions.{region}: expected {topology.primary_region} or {topology.dr_region}")
    serving = [r for r, spec in application.regions.items() if spec.state == "serving"]
    if len(serving) != 1:
        problems.append(f"application.regions: expected exactly one region with state 'serving', got {serving}")
    for name, function in application.functions.items():
        if name not in policy.business_functions:
            problems.append(f"application.functions.{name}: expected one of the business_functions "
                            f"{sorted(policy.business_functions)}")
        if "worker" in function.services and any(spec.workers == 0 for spec in application.regions.values()):
            problems.append(f"application.functions.{name}.services: needs a worker, but a region has workers: 0")
    missing = sorted(set(policy.business_functions) - set(application.functions))
    if missing:
        problems.append(f"application.functions: every business function needs its synthetic transaction; "
                        f"missing {missing}")
    return problems


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy file: {exc.strerror}") from exc


# libyaml's loader where the machine has it: the same safe subset, about ten times faster.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml_mapping(path: Path, text: str | None = None) -> dict[str, Any]:
    label = path.name
    if text is None:
        text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_SAFE_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PolicyError(f"{label}:{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{label}: expected a mapping of policy sections, got {type(data).__name__}")
    return data


def overlay_policy(base: Any, overlay: Any, *, where: str = "") -> Any:
    """`overlay` laid over `base`: mappings merge key by key, lists of named entries (nodes, locations) merge
    entry by entry on `name` (an overlay entry must name one the base has), anything else is replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        return {**base, **{key: overlay_policy(base[key], value, where=f"{where}.{key}".lstrip("."))
                           if key in base else value for key, value in overlay.items()}}
    named = (lambda items: isinstance(items, list) and all(isinstance(i, dict) and "name" in i for i in items))
    if named(base) and named(overlay) and overlay:
        by_name = {entry["name"]: entry for entry in overlay}
        unknown = sorted(set(by_name) - {entry["name"] for entry in base})
        if unknown:
            raise PolicyError(f"overlay: {where} names {', '.join(unknown)}, which the policy does not have")
        return [overlay_policy(entry, by_name[entry["name"]], where=f"{where}[{entry['name']}]")
                if entry["name"] in by_name else entry for entry in base]
    return overlay


# Policies already validated, by the text they were read from. Every DAG file, many operators and hooks load the
# policy, and dag.test() re-parses the whole DAG folder on each call: validating once per text (a Policy is frozen,
# so one instance is safely shared) took a test run's DAG parsing from ~0.9 s a file to about half that.
_VALIDATED: dict[tuple[str, str, str | None, str | None], Policy] = {}
_VALIDATED_LIMIT = 32


def load_policy(path: str | os.PathLike[str] | None = None) -> Policy:
    """Read and validate a policy file; the default is $CONTINUITY_POLICY or include/policy.yaml. With
    $CONTINUITY_POLICY_OVERLAY set, that file is laid over it first (`overlay_policy`). The files are read on
    every call (an edit is seen at once); what was validated before from the same text is not validated again."""
    path = Path(path) if path else policy_path()
    overlay = policy_overlay_path()
    text = _read_text(path)
    overlay_text = _read_text(overlay) if overlay is not None else None
    key = (str(path), text, str(overlay) if overlay is not None else None, overlay_text)
    cached = _VALIDATED.get(key)
    if cached is not None:
        return cached
    policy = _validate(path, text, overlay, overlay_text)
    if len(_VALIDATED) >= _VALIDATED_LIMIT:
        _VALIDATED.pop(next(iter(_VALIDATED)))
    _VALIDATED[key] = policy
    return policy


def _validate(path: Path, text: str, overlay: Path | None, overlay_text: str | None) -> Policy:
    label = path.name
    data = _read_yaml_mapping(path, text)
    if overlay is not None:
        data = overlay_policy(data, _read_yaml_mapping(overlay, overlay_text))
        label = f"{label} + {overlay.name}"
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        lines = [f"{label}: {_dotted(e['loc'])}: {_describe_error(e)}" for e in exc.errors()]
        raise PolicyError("\n".join(lines)) from None
    problems = _check_references(policy)
    if problems:
        raise PolicyError("\n".join(f"{label}: {p}" for p in problems))
    return policy
