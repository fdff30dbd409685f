"""Incidents: one record per cause, the deliveries that told people of it, and what they decided.

An incident lives in storage, in every required location, under `incidents/<incident id>/`:
`incident.json` (the record and its timeline), `receipts/` (one per message sent, or failed), and
`decisions/` (each approval asked of a person: approved, rejected or timed out, with the text). An
index `incidents/open/<cause key>.json` names the open incident of each cause, so a second trigger of
the same cause joins it instead of opening another.

Delivery is channel-agnostic: the caller gives one sender per method (the Airflow layer builds them
from the Slack, PagerDuty and SMTP providers' notifiers). A delivery that already has a receipt is not
sent again, so rerunning a task never tells anyone twice; a failing sender is retried, then recorded
as failed and the message goes by the audience's next method. Nothing here imports Airflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from tenacity import Retrying, stop_after_attempt, wait_exponential

from continuity.policy.model import SEVERITY_ORDER, Audience, Policy, Severity, format_duration
from continuity.incidents.journal import LocalJournal
from continuity.storage.locations import StorageLocation, key_safe

log = logging.getLogger(__name__)

INCIDENT_PREFIX = "incidents/"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__
OPEN_INDEX = f"{INCIDENT_PREFIX}open/"
# Methods that carry a message to people, and so can stand in for a failed one. PagerDuty pages (one
# alert per dedup key): a second page is no replacement for a lost Slack message, so it is never a fallback.
MESSAGE_METHODS = ("slack", "email")

IncidentKind = Literal["incident", "drill", "planned"]


class IncidentError(ValueError):
    """Bad incident input (unknown severity, function or incident id): nothing was changed."""


class DeliveryFailed(RuntimeError):
    """A message reached nobody by any of the audience's methods (receipts say what was tried)."""


class IncidentRequest(BaseModel):
    """What a trigger asks for: by hand (the DAG's params) or from a cause (a failed run, an assessment)."""

    model_config = ConfigDict(extra="forbid")

    severity: Severity
    title: str = Field(min_length=1)
    functions: list[str] = []
    description: str = ""
    commander: str = "on-call"
    incident_id: str | None = None  # join this open incident (by hand)
    cause_key: str | None = None  # e.g. "failed:dr_full_backup"; None: derived from the title
    kind: IncidentKind = "incident"
    source: str = "manual"  # who or what raised it (a run id, "dr_health_monitor assessment ...")
    # "resolve": the cause is over (a health check green again): dr_incident resolves `incident_id`.
    action: Literal["open", "resolve"] = "open"

    def key(self) -> str:
        """The cause this request is about: one open incident per key."""
        return self.cause_key or f"manual:{re.sub(r'[^a-z0-9]+', '-', self.title.lower()).strip('-')}"


class TimelineEvent(BaseModel):
    at: datetime
    what: str


class Incident(BaseModel):
    model_config = ConfigDict(extra="forbid")

    incident_id: str
    cause_key: str
    kind: IncidentKind = "incident"
    severity: Severity
    title: str
    description: str
    functions: list[str]
    commander: str
    opened_at: datetime
    opened_by: str = ""  # the request's source (a run id): its retries find their own incident, not a second trigger
    status: Literal["open", "resolved"] = "open"
    resolved_at: datetime | None = None
    triggers: int = 1
    acknowledged_by: str | None = None
    timeline: list[TimelineEvent] = []
    updates: list[TimelineEvent] = []  # approved public updates, newest last: what the status page shows
    update_requested_at: datetime | None = None  # when the last periodic update was asked for

    def note(self, what: str, *, at: datetime | None = None) -> None:
        self.timeline.append(TimelineEvent(at=at or datetime.now(timezone.utc), what=what))

    @property
    def duration(self) -> timedelta:
        return (self.resolved_at or datetime.now(timezone.utc)) - self.opened_at


class Receipt(BaseModel):
    """One message by one method: delivered (with the service's reference when it gives one) or failed."""

    model_config = ConfigDict(extra="forbid")

    incident_id: str
    purpose: str  # "alert", "escalation", "update-2", "resolved", "customers-notice", "drill-test", ...
    audience: str
    method: str
    recipients: list[str]
    status: Literal["delivered", "failed"]
    attempts: int
    at: datetime
    subject: str
    reference: str | None = None  # e.g. PagerDuty's dedup key
    error: str | None = None
    fallback_for: str | None = None  # this delivery replaced a failed one by that method
    test: bool = False


class Decision(BaseModel):
    """A person's answer to an approval: only `approved` text is ever published."""

    model_config = ConfigDict(extra="forbid")

    incident_id: str
    notice: str  # e.g. "customers-notice", "public-statement", "update-2"
    audience: str
    outcome: Literal["approved", "rejected", "timed_out"]
    decided_by: str | None
    decided_at: datetime
    text: str


@dataclass(frozen=True)
class Message:
    subject: str
    body: str
    severity: Severity
    event: Literal["trigger", "resolve", "change"] = "trigger"  # what PagerDuty is told
    test: bool = False


# A sender delivers `message` to `recipients` by one method and returns the service's reference (or None);
# it raises when the service did not accept the message.
Sender = Callable[[list[str], Message, str], str | None]  # recipients, message, dedup key (incident id)


def split_subject(text: str, *, default: str) -> tuple[str, str]:
    """A rendered template's `Subject:` first line, and the rest."""
    first, _, rest = text.partition("\n")
    if first.startswith("Subject:"):
        return first.removeprefix("Subject:").strip(), rest.lstrip("\n")
    return default, text


def new_incident_id(at: datetime) -> str:
    # Random, not derived from the cause: a cause resolved and raised again in the same second is a new incident.
    return f"INC-{at:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def check_request(policy: Policy, request: IncidentRequest) -> None:
    unknown = sorted(set(request.functions) - set(policy.business_functions))
    if unknown:
        raise IncidentError(f"affected functions {unknown} are not business functions of the policy (known: "
                            f"{sorted(policy.business_functions)}); no incident was opened")
    if request.incident_id is not None and not re.fullmatch(r"[A-Za-z0-9._-]{1,80}", request.incident_id):
        raise IncidentError(f"incident id {request.incident_id!r}: use letters, digits, '.', '_' or '-' "
                            f"(at most 80); no incident was opened")


class IncidentStore:
    """The incidents in storage: written to every location that answers, read from the first that has them.

    With a journal (`LocalJournal`), a record that misses a location (that region's storage is gone) waits there
    and is read from there until `catch_up` writes it where it is missing: an incident opened while every bucket
    is unreachable still opens, its alert still leaves. Without one, a record no location took is an error."""

    def __init__(self, locations: Sequence[StorageLocation], *, journal: LocalJournal | None = None) -> None:
        if not locations:
            raise IncidentError("no storage location to keep incidents in")
        self.locations = list(locations)
        self.journal = journal

    # -- plain records ----------------------------------------------------------------------------
    def _put(self, key: str, data: bytes) -> None:
        missing: dict[str, str] = {}
        for location in self.locations:
            try:
                location.put_bytes(key, data)
            except Exception as exc:  # that region's storage is gone: the others, or the journal, keep it
                missing[location.name] = f"{location.describe(key)}: {_first_line(exc)}"
        if not missing:
            if self.journal is not None:
                self.journal.discard(key)  # every location holds these bytes now
            return
        if self.journal is None:
            if len(missing) == len(self.locations):
                raise IncidentError(f"cannot write {key} to any location: {'; '.join(missing.values())}")
            log.warning("incident record %s missed %s", key, "; ".join(missing.values()))
            return
        where = self.journal.keep(key, data, sorted(missing))
        log.warning("incident record %s kept in the local journal (%s) until %s answer(s) again: %s", key, where,
                    ", ".join(sorted(missing)), "; ".join(missing.values()))

    def _get(self, key: str) -> bytes | None:
        if self.journal is not None:
            kept = self.journal.get(key)
            if kept is not None:  # a write that missed a location: newer than any location's copy
                return kept
        errors = []
        for location in self.locations:
            try:
                if location.head(key) is not None:
                    return location.get_bytes(key)
            except Exception as exc:  # one unreachable location must not hide the record kept elsewhere
                errors.append(f"{location.describe(key)}: {exc}")
        if errors and len(errors) == len(self.locations):
            if self.journal is None:
                raise RuntimeError(f"cannot read {key} from any location: {'; '.join(errors)}")
            # Nothing answers and the journal has no newer copy: read as absent, so a new incident opens and
            # people are told (a duplicate of one opened elsewhere is joined by hand; silence is worse).
            log.warning("cannot read %s from any location (taken as absent): %s", key, "; ".join(errors))
        return None

    def _delete(self, key: str) -> None:
        if self.journal is not None:
            self.journal.discard(key)
        for location in self.locations:
            try:
                if location.head(key) is not None:
                    location.delete(key)
            except Exception as exc:  # left there: a stale open index is ignored once its incident is resolved
                log.warning("cannot remove %s: %s", location.describe(key), _first_line(exc))

    def _keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` in any location that answers, or in the journal."""
        keys: set[str] = set()
        answered = False
        for location in self.locations:
            try:
                keys.update(location.list(prefix))
                answered = True
            except Exception as exc:
                log.warning("cannot list %s: %s", location.describe(prefix), _first_line(exc))
        if self.journal is not None:
            keys.update(entry.key for entry in self.journal.entries(prefix))
        elif not answered:
            raise RuntimeError(f"cannot list {prefix} in any location")
        return sorted(keys)

    def catch_up(self) -> list[str]:
        """Write what the journal holds to the locations that missed it (see `LocalJournal.catch_up`)."""
        return self.journal.catch_up(self.locations) if self.journal is not None else []

    # -- incidents --------------------------------------------------------------------------------
    @staticmethod
    def _key(incident_id: str) -> str:
        return f"{INCIDENT_PREFIX}{key_safe(incident_id)}/incident.json"

    def load(self, incident_id: str) -> Incident | None:
        data = self._get(self._key(incident_id))
        return Incident.model_validate_json(data) if data is not None else None

    def get(self, incident_id: str) -> Incident:
        incident = self.load(incident_id)
        if incident is None:
            raise IncidentError(f"no incident {incident_id} in {self.locations[0].describe(INCIDENT_PREFIX)}")
        return incident

    def save(self, incident: Incident) -> None:
        self._put(self._key(incident.incident_id), incident.model_dump_json(indent=2).encode())

    def open_for(self, cause_key: str) -> Incident | None:
        data = self._get(f"{OPEN_INDEX}{key_safe(cause_key)}.json")
        incident = self.load(json.loads(data)["incident_id"]) if data is not None else None
        # An index entry a location kept while its removal could not reach it names a resolved incident.
        return incident if incident is not None and incident.status == "open" else None

    def open_incidents(self) -> list[Incident]:
        found = []
        for key in self._keys(OPEN_INDEX):
            data = self._get(key)
            incident = self.load(json.loads(data)["incident_id"]) if data is not None else None
            if incident is not None and incident.status == "open":
                found.append(incident)
        return found

    def all_incidents(self) -> list[Incident]:
        """Every incident kept, oldest first."""
        found = [self._get(k) for k in self._keys(INCIDENT_PREFIX) if k.endswith("/incident.json")]
        return sorted((Incident.model_validate_json(data) for data in found if data is not None),
                      key=lambda i: i.opened_at)

    def open_or_join(self, request: IncidentRequest, *, now: datetime | None = None) -> tuple[Incident, bool]:
        """The open incident of the request's cause (or the incident it names), with this trigger added to
        its timeline; else a new incident. Returns (incident, joined)."""
        now = now or datetime.now(timezone.utc)
        existing = self.get(request.incident_id) if request.incident_id and self.load(request.incident_id) else None
        if existing is not None and existing.status == "resolved":
            raise IncidentError(f"incident {existing.incident_id} was resolved at {existing.resolved_at:%Y-%m-%d %H:%M} "
                                f"UTC; open a new one (leave incident id empty)")
        existing = existing or self.open_for(request.key())
        if existing is not None and existing.opened_by == request.source and not request.incident_id:
            return existing, False  # the same trigger again (a retried task): not a second trigger
        if existing is not None:
            existing.triggers += 1
            if SEVERITY_ORDER[request.severity] > SEVERITY_ORDER[existing.severity]:
                existing.note(f"severity raised from {existing.severity} to {request.severity} by {request.source}", at=now)
                existing.severity = request.severity
                if request.kind == "incident":  # a planned change that went wrong is an incident now
                    existing.kind = "incident"
            existing.functions = sorted(set(existing.functions) | set(request.functions))
            existing.note(f"triggered again ({existing.triggers} triggers) by {request.source}: {request.title}", at=now)
            self.save(existing)
            return existing, True
        incident = Incident(incident_id=request.incident_id or new_incident_id(now),
                            cause_key=request.key(), kind=request.kind, severity=request.severity, title=request.title,
                            description=request.description, functions=sorted(request.functions),
                            commander=request.commander, opened_at=now, opened_by=request.source)
        incident.note(f"opened ({request.severity}) by {request.source}: {request.title}", at=now)
        # The record first, then the index: a crash between them leaves an incident no one joins, never an
        # index entry pointing at nothing.
        self.save(incident)
        self._put(f"{OPEN_INDEX}{key_safe(incident.cause_key)}.json",
                  json.dumps({"incident_id": incident.incident_id}).encode())
        return incident, False

    def add_event(self, incident_id: str, what: str, *, at: datetime | None = None) -> Incident:
        incident = self.get(incident_id)
        incident.note(what, at=at)
        self.save(incident)
        return incident

    def resolve(self, incident_id: str, *, by: str, now: datetime | None = None) -> Incident:
        incident = self.get(incident_id)
        if incident.status == "resolved":
            return incident
        now = now or datetime.now(timezone.utc)
        incident.status, incident.resolved_at = "resolved", now
        incident.note(f"resolved by {by} after {format_duration(incident.duration)}", at=now)
        self.save(incident)
        self._delete(f"{OPEN_INDEX}{key_safe(incident.cause_key)}.json")
        return incident

    def updates_due(self, interval: timedelta, *, now: datetime | None = None) -> list[Incident]:
        """Open incidents (not drills or planned changes) whose last update, or opening, is `interval` old;
        each is marked as asked for now, so the next look does not ask again before another interval."""
        now = now or datetime.now(timezone.utc)
        due = []
        for incident in self.open_incidents():
            last = max([incident.opened_at, *(u.at for u in incident.updates),
                        *([incident.update_requested_at] if incident.update_requested_at else [])])
            if incident.kind == "incident" and now - last >= interval:
                incident.update_requested_at = now
                incident.note(f"status update due ({format_duration(interval)} since the last): asked for", at=now)
                self.save(incident)
                due.append(incident)
        return due

    # -- receipts and decisions -------------------------------------------------------------------
    @staticmethod
    def _receipt_key(incident_id: str, purpose: str, audience: str, method: str) -> str:
        return f"{INCIDENT_PREFIX}{key_safe(incident_id)}/receipts/{key_safe(purpose)}--{key_safe(audience)}--{method}.json"

    def receipt(self, incident_id: str, purpose: str, audience: str, method: str) -> Receipt | None:
        data = self._get(self._receipt_key(incident_id, purpose, audience, method))
        return Receipt.model_validate_json(data) if data is not None else None

    def record_receipt(self, receipt: Receipt) -> None:
        self._put(self._receipt_key(receipt.incident_id, receipt.purpose, receipt.audience, receipt.method),
                  receipt.model_dump_json(indent=2).encode())

    def receipts(self, incident_id: str) -> list[Receipt]:
        prefix = f"{INCIDENT_PREFIX}{key_safe(incident_id)}/receipts/"
        found = [self._get(k) for k in self._keys(prefix)]
        return sorted((Receipt.model_validate_json(data) for data in found if data is not None), key=lambda r: r.at)

    @staticmethod
    def _decision_key(incident_id: str, notice: str) -> str:
        return f"{INCIDENT_PREFIX}{key_safe(incident_id)}/decisions/{key_safe(notice)}.json"

    def record_decision(self, decision: Decision) -> None:
        self._put(self._decision_key(decision.incident_id, decision.notice), decision.model_dump_json(indent=2).encode())

    def decision(self, incident_id: str, notice: str) -> Decision | None:
        data = self._get(self._decision_key(incident_id, notice))
        return Decision.model_validate_json(data) if data is not None else None

    def put_document(self, incident_id: str, name: str, data: bytes) -> list[str]:
        key = f"{INCIDENT_PREFIX}{key_safe(incident_id)}/{name}"
        self._put(key, data)
        return [location.describe(key) for location in self.locations]


def _fallbacks(audience: Audience, failed: str, senders: Mapping[str, Sender]) -> list[str]:
    """The methods a message that `failed` to go by one method tries next: the audience's later message
    methods, then its earlier ones, then e-mail when the audience has addresses."""
    methods = list(audience.methods)
    start = methods.index(failed) + 1 if failed in methods else 0
    order = [m for m in methods[start:] + methods[:start] if m in MESSAGE_METHODS and m != failed]
    if "email" not in order and failed != "email" and audience.recipients.get("email"):
        order.append("email")
    return [m for m in order if m in senders]


def deliver(store: IncidentStore, incident: Incident, *, purpose: str, audience_name: str, audience: Audience,
            message: Message, senders: Mapping[str, Sender], methods: Iterable[str] | None = None,
            attempts: int = 3, wait_seconds: float = 1.0) -> list[Receipt]:
    """Send `message` to an audience by each of its methods (or `methods`), leaving a receipt for each.

    Already delivered (a receipt says so): not sent again. A method that keeps failing after `attempts`
    is recorded as failed, noted on the incident, and the message goes by the next method that has not
    failed. DeliveryFailed when some message reached nobody at all.
    """
    wanted = [m for m in (methods if methods is not None else audience.methods) if m in senders]
    receipts: list[Receipt] = []
    failed: dict[str, str] = {}
    undelivered: list[str] = []
    for method in wanted:
        receipt = _send_once(store, incident, purpose=purpose, audience_name=audience_name, audience=audience,
                             method=method, message=message, sender=senders[method], attempts=attempts,
                             wait_seconds=wait_seconds)
        receipts.append(receipt)
        if receipt.status == "failed":
            failed[method] = receipt.error or "failed"
            undelivered.append(method)
    for method in undelivered:
        replaced = False
        for fallback in _fallbacks(audience, method, senders):
            if fallback in failed:
                continue
            receipt = _send_once(store, incident, purpose=f"{purpose}-fallback-{method}", audience_name=audience_name,
                                 audience=audience, method=fallback, message=message, sender=senders[fallback],
                                 attempts=attempts, wait_seconds=wait_seconds, fallback_for=method)
            receipts.append(receipt)
            if receipt.status == "delivered":
                store.add_event(incident.incident_id, f"{purpose} to {audience_name}: {method} failed "
                                f"({failed[method]}); sent by {fallback} instead")
                replaced = True
                break
            failed[fallback] = receipt.error or "failed"
        if not replaced:
            store.add_event(incident.incident_id, f"{purpose} to {audience_name}: {method} failed ({failed[method]}) "
                            f"and no other method reached them")
    unreached = [m for m in undelivered if not any(r.fallback_for == m and r.status == "delivered" for r in receipts)]
    if unreached and not any(r.status == "delivered" for r in receipts):
        raise DeliveryFailed(f"{purpose} for incident {incident.incident_id} reached nobody in {audience_name}: "
                             + "; ".join(f"{m}: {failed[m]}" for m in failed)
                             + " (receipts under " + store.locations[0].describe(f"{INCIDENT_PREFIX}{incident.incident_id}/receipts/")
                             + ")")
    return receipts


def _send_once(store: IncidentStore, incident: Incident, *, purpose: str, audience_name: str, audience: Audience,
               method: str, message: Message, sender: Sender, attempts: int, wait_seconds: float,
               fallback_for: str | None = None) -> Receipt:
    previous = store.receipt(incident.incident_id, purpose, audience_name, method)
    if previous is not None and previous.status == "delivered":
        log.info("%s to %s by %s was delivered at %s: not sending it again", purpose, audience_name, method,
                 previous.at.isoformat(timespec="seconds"))
        return previous
    recipients = list(audience.recipients.get(method, []))
    tries = 0
    reference: str | None = None
    error: str | None = None
    try:
        for attempt in Retrying(stop=stop_after_attempt(attempts), reraise=True,
                                wait=wait_exponential(multiplier=wait_seconds, max=30 * wait_seconds)):
            with attempt:
                tries += 1
                reference = sender(recipients, message, incident.incident_id)
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else 'no detail'}"
        log.warning("%s to %s by %s failed after %d attempt(s): %s", purpose, audience_name, method, tries, error)
    receipt = Receipt(incident_id=incident.incident_id, purpose=purpose, audience=audience_name, method=method,
                      recipients=recipients, status="failed" if error else "delivered", attempts=tries,
                      at=datetime.now(timezone.utc), subject=message.subject, reference=reference, error=error,
                      fallback_for=fallback_for, test=message.test)
    store.record_receipt(receipt)
    if not error:
        log.info("%s to %s by %s delivered (%d attempt(s))%s", purpose, audience_name, method, tries,
                 f", reference {reference}" if reference else "")
    return receipt


# -- the inbox: causes reported by anything (a failed task, an assessment, a failover) ----------------
INBOX = f"{INCIDENT_PREFIX}inbox/"


def report_cause(locations: Sequence[StorageLocation], request: IncidentRequest, *,
                 now: datetime | None = None, journal: LocalJournal | None = None) -> str:
    """Leave `request` in the inbox of every location (dr_incident_inbox turns it into a dr_incident run).
    Written everywhere because the region that failed may hold one of them; one copy is enough. When no location
    takes it, the journal does (the inbox trigger reads it there); without a journal that is an error."""
    now = now or datetime.now(timezone.utc)
    name = f"{now:%Y%m%dT%H%M%S%f}-{hashlib.sha256(request.model_dump_json().encode()).hexdigest()[:8]}.json"
    written, errors = 0, []
    for location in locations:
        try:
            location.put_bytes(f"{INBOX}{name}", request.model_dump_json().encode())
            written += 1
        except Exception as exc:  # the others may still take it
            errors.append(f"{location.describe(INBOX)}: {exc}")
    if not written:
        if journal is None:
            raise RuntimeError(f"could not report the cause {request.key()} anywhere: {'; '.join(errors)}")
        where = journal.keep(f"{INBOX}{name}", request.model_dump_json().encode(), [l.name for l in locations])
        log.warning("cause %s kept in the local journal (%s): no storage location took it: %s", request.key(),
                    where, "; ".join(errors))
    return name


def pending_causes(locations: Sequence[StorageLocation], *,
                   journal: LocalJournal | None = None) -> list[tuple[str, IncidentRequest]]:
    """Causes waiting in the inbox of any location, or the journal, oldest first, each once."""
    found: dict[str, IncidentRequest] = {}
    for entry in journal.entries(INBOX) if journal is not None else []:
        found[entry.key.removeprefix(INBOX)] = IncidentRequest.model_validate_json(entry.data)
    for location in locations:
        try:
            for key in location.list(INBOX):
                name = key.removeprefix(INBOX)
                if name.endswith(".json") and name not in found:
                    found[name] = IncidentRequest.model_validate_json(location.get_bytes(key))
        except Exception as exc:  # an unreachable region: the others hold the same causes
            log.warning("cannot read the incident inbox at %s: %s", location.describe(INBOX), exc)
    return sorted(found.items())


def claim_cause(locations: Sequence[StorageLocation], name: str, *, journal: LocalJournal | None = None) -> None:
    """A cause was handed over: gone from every inbox (a location that is down keeps its copy; handing
    it over again only joins the open incident)."""
    if journal is not None:
        journal.discard(f"{INBOX}{name}")
    for location in locations:
        try:
            if location.head(f"{INBOX}{name}") is not None:
                location.delete(f"{INBOX}{name}")
        except Exception as exc:
            log.warning("cannot remove %s: %s", location.describe(f"{INBOX}{name}"), exc)


def communication_test(store: IncidentStore, policy: Policy, senders: Mapping[str, Sender], *, drill_id: str,
                       wait_seconds: float = 1.0) -> tuple[Incident, list[Receipt]]:
    """The drill's test of the communication system: a message marked as a test through every channel
    of every internal audience (PagerDuty as a change event: nobody is paged), each with its receipt.
    External audiences are never written to by a test. The test incident is resolved at once."""
    assert policy.communication is not None
    incident, _ = store.open_or_join(IncidentRequest(
        severity="low", title=f"Communication test of drill {drill_id}", kind="drill",
        cause_key=f"drill-communication:{drill_id}", source=f"drill {drill_id}"))
    receipts: list[Receipt] = []
    for name, audience in policy.communication.audiences.items():
        if audience.external:
            continue
        receipts += deliver(store, incident, purpose="drill-test", audience_name=name, audience=audience,
                            message=Message(subject=f"TEST of the incident channels (drill {drill_id})",
                                            body=f"This is a test of the incident communication channels during "
                                                 f"drill {drill_id}. No action is needed.",
                                            severity="low", event="change", test=True),
                            senders=senders, wait_seconds=wait_seconds)
    store.resolve(incident.incident_id, by=f"drill {drill_id}")
    return incident, receipts
