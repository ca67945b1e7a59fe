"""What the sender remembers between runs (`send --state FILE`), and what a run must notify because of it.

Pure: the previous record of a post and what this run found (its links, its `updated` date, or that it
answers 410 Gone) go in; the targets to notify come out, and then the record to keep. The state file is
JSON written by `dumps` and read back by `loads`; reading and writing the file is the caller's.
Specs: https://www.w3.org/TR/webmention/#sending-webmentions-for-updated-posts (§3.1.4: an edited post is
re-sent to every target, removed links included; a deleted post answers 410 and is re-sent too) and
https://www.hixie.ch/specs/pingback/pingback (which knows no update or deletion).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Final

from pingforward.errors import PingforwardError

# The file names its format and version, so that a later pingforward can read an older file and
# an older one refuses a newer file instead of misreading it.
FORMAT: Final = "pingforward-send-state"
VERSION: Final = 1


class Status(StrEnum):
    """Bridgy's buckets (bridgy tasks.py SendWebmentions), plus one for --dry-run."""

    SENT = "sent"  # accepted: any 2xx to a Webmention, a 303, a pingback string or fault 48
    SKIPPED = "skipped"  # nothing to notify: no endpoint, not an http(s) URL, refused address
    FAILED = "failed"  # permanent: 4xx other than 429, a permanent fault
    ERROR = "error"  # retry later: 5xx, 429, network errors, timeouts, pingback fault 50
    DISCOVERED = "discovered"  # dry run: an endpoint was found and nothing was sent


class Change(StrEnum):
    """What became of a post since the last run, which decides what is notified (see `plan`)."""

    NEW = "new"
    EDITED = "edited"
    UNCHANGED = "unchanged"
    DELETED = "deleted"


WEBMENTION: Final = "webmention"
PINGBACK: Final = "pingback"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one notification of this run came to, as the state keeps it."""

    status: Status
    protocol: str | None = None  # "webmention", "pingback", or None when no endpoint was used
    detail: str = ""
    retry_after: int | None = None  # seconds the target asked us to wait (RFC 9110 §10.2.3)


@dataclass(frozen=True, slots=True)
class TargetRecord:
    """The last result at one target of a post."""

    status: Status
    at: datetime  # when it was notified
    protocol: str | None = None
    detail: str = ""
    retry_at: datetime | None = None  # not to be tried again before this (its Retry-After)
    linked: bool = True  # False: a link the post has dropped, still to be told of that

    @property
    def pending(self) -> bool:
        """Worth trying again on the next run, whether or not the post changes."""
        return self.status is Status.ERROR


@dataclass(frozen=True, slots=True)
class PostRecord:
    """What was notified for one post: its `updated` date as its feed gave it, and each target's last result."""

    checked: datetime  # the last run that read it
    targets: Mapping[str, TargetRecord] = field(default_factory=dict)
    updated: str | None = None
    gone: bool = False  # it answered 410 Gone and its targets were told; kept while some of them are pending

    @property
    def links(self) -> frozenset[str]:
        return frozenset(target for target, record in self.targets.items() if record.linked)


@dataclass(frozen=True, slots=True)
class State:
    posts: Mapping[str, PostRecord] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    """What a run does for one post: the targets to notify now, and those waiting for their Retry-After."""

    notify: tuple[str, ...]
    waiting: tuple[str, ...] = ()
    reason: Change = Change.NEW


def _due(record: TargetRecord, now: datetime) -> bool:
    return record.retry_at is None or record.retry_at <= now


def plan(previous: PostRecord | None, links: Sequence[str], updated: str | None, now: datetime) -> Plan:
    """The targets to notify for a post that links to `links` now.

    - New: every link.
    - Edited (its links, or its `updated` date, changed): every link again, and every Webmention
      target it no longer links to that has or may have the mention (§3.1.4), so its receiver
      re-reads the post and drops the mention. A Pingback target that accepted a ping is not pinged
      again: Pingback has no updates, and a receiver answers a repeat with fault 48 at best; a
      removed link is not pinged either, as the receiver would only find no link (fault 17).
    - Unchanged: only what is pending (a "retry later" answer), and links that have no result yet (a
      run stopped before it recorded them). A refused or sent target waits for the post to change.
    Whatever is pending waits for the Retry-After its target gave.
    """
    if previous is None:
        return Plan(tuple(dict.fromkeys(links)), reason=Change.NEW)
    edited = frozenset(links) != previous.links or (
        updated is not None and previous.updated is not None and updated != previous.updated
    )
    notify: list[str] = []
    waiting: list[str] = []

    def consider(target: str, record: TargetRecord | None, again: bool) -> None:
        if record is not None and record.pending and not _due(record, now):
            waiting.append(target)
        elif record is None or record.pending or again:
            notify.append(target)

    for link in dict.fromkeys(links):
        record = previous.targets.get(link)
        pinged = record is not None and record.protocol == PINGBACK and record.status is Status.SENT
        consider(link, record, edited and not pinged)
    current = frozenset(links)
    for target, record in previous.targets.items():
        if target in current or record.protocol != WEBMENTION:
            continue
        if record.linked and edited and record.status in (Status.SENT, Status.ERROR):
            consider(target, record, True)
        elif not record.linked and record.pending:  # a removal not yet told
            consider(target, record, False)
    return Plan(tuple(notify), tuple(waiting), Change.EDITED if edited else Change.UNCHANGED)


def plan_deletion(previous: PostRecord, now: datetime) -> Plan:
    """The targets to notify for a post that answers 410 Gone: its Webmention targets that have the mention.

    Once told, they are dropped from the state (see `record`); only pending ones are tried again.
    """
    notify: list[str] = []
    waiting: list[str] = []
    for target, record in previous.targets.items():
        if record.protocol != WEBMENTION:
            continue
        if record.pending and not _due(record, now):
            waiting.append(target)
        elif record.pending or (not previous.gone and record.status is Status.SENT):
            notify.append(target)
    return Plan(tuple(notify), tuple(waiting), Change.DELETED)


def _record(outcome: Outcome, now: datetime, linked: bool, before: TargetRecord | None) -> TargetRecord:
    retry_at = None
    if outcome.status is Status.ERROR and outcome.retry_after is not None:
        retry_at = now + timedelta(seconds=outcome.retry_after)
    # A dry run's "discovered" is not a result: the target stays as it was.
    if outcome.status is Status.DISCOVERED and before is not None:
        return replace(before, linked=linked)
    return TargetRecord(outcome.status, now, outcome.protocol, outcome.detail, retry_at, linked)


def record(
    previous: PostRecord | None,
    links: Sequence[str],
    updated: str | None,
    outcomes: Mapping[str, Outcome],
    now: datetime,
) -> PostRecord:
    """The record to keep after notifying a post: each link's newest result, and removed links still pending."""
    before = previous.targets if previous is not None else {}
    targets: dict[str, TargetRecord] = {}
    for link in dict.fromkeys(links):
        if link in outcomes:
            targets[link] = _record(outcomes[link], now, True, before.get(link))
        elif link in before:
            targets[link] = replace(before[link], linked=True)
    current = frozenset(links)
    for target, old in before.items():
        if target in current:
            continue
        if target in outcomes:  # a removed link, told of it: kept only until it is told for sure
            told = _record(outcomes[target], now, False, old)
            if told.pending:
                targets[target] = told
        elif old.pending and old.protocol == WEBMENTION and not _due(old, now):
            targets[target] = replace(old, linked=False)
    if not outcomes and previous is not None and previous.updated == updated and targets == dict(before):
        return replace(previous, checked=now)
    return PostRecord(now, targets, updated)


def record_deletion(previous: PostRecord, outcomes: Mapping[str, Outcome], now: datetime) -> PostRecord | None:
    """What to keep of a deleted post: its targets still pending, or nothing once all were told."""
    targets: dict[str, TargetRecord] = {}
    for target, old in previous.targets.items():
        if target in outcomes:
            told = _record(outcomes[target], now, False, old)
            if told.pending:
                targets[target] = told
        elif old.pending and old.protocol == WEBMENTION:
            targets[target] = replace(old, linked=False)
    return PostRecord(now, targets, previous.updated, gone=True) if targets else None


def unlisted(state: State, listed: Iterable[str]) -> tuple[str, ...]:
    """The posts the state knows that the feed no longer lists: deleted, or out of its window."""
    seen = frozenset(listed)
    return tuple(url for url in state.posts if url not in seen)


# ---------------------------------------------------------------------------------------------
# The file: JSON, keys sorted and indented so that it reads well and diffs small.


class StateError(PingforwardError, ValueError):
    """The state file cannot be read as a state; the message says why."""


def dumps(state: State) -> str:
    """The state as the text of its file."""
    posts = {url: _post_json(post) for url, post in sorted(state.posts.items())}
    return json.dumps({"format": FORMAT, "version": VERSION, "posts": posts}, indent=2, sort_keys=True) + "\n"


def _when(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _post_json(post: PostRecord) -> dict[str, object]:
    data: dict[str, object] = {"checked": _when(post.checked), "updated": post.updated}
    if post.gone:
        data["gone"] = True
    data["targets"] = {target: _target_json(record) for target, record in sorted(post.targets.items())}
    return data


def _target_json(target: TargetRecord) -> dict[str, object]:
    data: dict[str, object] = {
        "status": target.status.value,
        "at": _when(target.at),
        "protocol": target.protocol,
        "detail": target.detail,
    }
    if target.retry_at is not None:
        data["retry_at"] = _when(target.retry_at)
    if not target.linked:
        data["linked"] = False
    return data


def loads(text: str) -> State:
    """A state from the text of its file; raise `StateError` if it is not one this version can read."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise StateError(f"not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StateError(f'not a pingforward send state (no "format": "{FORMAT}")')
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StateError('its "version" is not a positive whole number')
    if version > VERSION:
        raise StateError(f"written in format version {version} by a newer pingforward; this one reads {VERSION}")
    posts = data.get("posts")
    if not isinstance(posts, dict):
        raise StateError('"posts" is not an object')
    return State({url: _post(url, post) for url, post in posts.items()})


def _post(url: str, data: object) -> PostRecord:
    if not isinstance(data, dict) or not isinstance(data.get("targets"), dict):
        raise StateError(f'the post {url!r} has no "targets" object')
    updated = data.get("updated")
    if updated is not None and not isinstance(updated, str):
        raise StateError(f'the post {url!r} has an "updated" that is not a string')
    targets = {target: _target(url, target, value) for target, value in data["targets"].items()}
    return PostRecord(_datetime(url, data.get("checked")), targets, updated, data.get("gone") is True)


def _target(url: str, target: str, data: object) -> TargetRecord:
    if not isinstance(data, dict):
        raise StateError(f"the target {target!r} of {url!r} is not an object")
    try:
        status = Status(str(data.get("status")))
    except ValueError:
        raise StateError(f'the target {target!r} of {url!r} has an unknown "status"') from None
    protocol = data.get("protocol")
    if protocol not in (None, WEBMENTION, PINGBACK):
        raise StateError(f'the target {target!r} of {url!r} has an unknown "protocol"')
    retry_at = data.get("retry_at")
    return TargetRecord(
        status,
        _datetime(url, data.get("at")),
        protocol,
        str(data.get("detail") or ""),
        None if retry_at is None else _datetime(url, retry_at),
        data.get("linked", True) is not False,
    )


def _datetime(url: str, value: object) -> datetime:
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    raise StateError(f"the post {url!r} has a time that is not an ISO 8601 date: {value!r}")
