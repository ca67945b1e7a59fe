"""The sender's memory (sendstate.py): previous record + what this run found -> what to notify, and the file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pingforward.sendstate import (
    FORMAT,
    Outcome,
    PostRecord,
    State,
    StateError,
    Status,
    TargetRecord,
    dumps,
    loads,
    plan,
    plan_deletion,
    record,
    record_deletion,
    unlisted,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
BEFORE = NOW - timedelta(days=1)
A, B, C, D = (f"https://{name}.example/" for name in "abcd")
WM, PB = "webmention", "pingback"


def target(
    status: Status, protocol: str | None = WM, *, retry_in: int | None = None, linked: bool = True
) -> TargetRecord:
    retry_at = None if retry_in is None else NOW + timedelta(seconds=retry_in)
    return TargetRecord(status, BEFORE, protocol, "", retry_at, linked)


def post(updated: str | None = None, **targets: TargetRecord) -> PostRecord:
    return PostRecord(BEFORE, {f"https://{name}.example/": value for name, value in targets.items()}, updated)


SENT, FAILED, ERROR, SKIPPED = Status.SENT, Status.FAILED, Status.ERROR, Status.SKIPPED

# (previous record, links now, updated now) -> (targets to notify, targets waiting, reason)
PLAN_CASES = [
    pytest.param(None, [A, B, A], None, ([A, B], [], "new"), id="new-post-every-link-once"),
    pytest.param(post(a=target(SENT), b=target(SKIPPED, None)), [A, B], None, ([], [], "unchanged"), id="unchanged"),
    pytest.param(
        post(a=target(SENT), b=target(FAILED), c=target(ERROR)),
        [A, B, C],
        None,
        ([C], [], "unchanged"),
        id="unchanged-retries-only-the-pending",
    ),
    pytest.param(
        post(a=target(ERROR, retry_in=600), b=target(ERROR, retry_in=-1)),
        [A, B],
        None,
        ([B], [A], "unchanged"),
        id="retry-after-honoured",
    ),
    pytest.param(post(a=target(SENT)), [A, B], None, ([A, B], [], "edited"), id="a-new-link-is-an-edit"),
    pytest.param(
        post(a=target(SENT), b=target(SENT)),
        [A, C],
        None,
        ([A, C, B], [], "edited"),
        id="edit-adds-and-removes-old-and-new-and-removed-told",
    ),
    pytest.param(
        post(a=target(SENT, PB), b=target(FAILED, PB), c=target(SENT)),
        [A, B, C, D],
        None,
        ([B, C, D], [], "edited"),
        id="edit-pingback-once-per-link-refused-retried",
    ),
    pytest.param(
        post(a=target(SENT), b=target(SENT, PB), c=target(SKIPPED, None), d=target(FAILED)),
        [A],
        None,
        ([A], [], "edited"),
        id="removed-pingback-skipped-or-refused-not-told",
    ),
    pytest.param(
        post("2026-01-01T00:00:00+00:00", a=target(SENT), b=target(FAILED)),
        [A, B],
        "2026-02-01T00:00:00+00:00",
        ([A, B], [], "edited"),
        id="updated-date-changed",
    ),
    pytest.param(
        post(None, a=target(SENT)),
        [A],
        "2026-02-01T00:00:00+00:00",
        ([], [], "unchanged"),
        id="updated-date-first-seen-is-no-edit",
    ),
    pytest.param(
        post(a=target(SENT), b=target(ERROR, linked=False)),
        [A],
        None,
        ([B], [], "unchanged"),
        id="pending-removal-retried",
    ),
    pytest.param(
        post(a=target(SENT), b=target(ERROR, retry_in=60, linked=False)),
        [A],
        None,
        ([], [B], "unchanged"),
        id="pending-removal-waits",
    ),
]


@pytest.mark.parametrize(("previous", "links", "updated", "expected"), PLAN_CASES)
def test_plan(
    previous: PostRecord | None, links: list[str], updated: str | None, expected: tuple[list[str], list[str], str]
) -> None:
    got = plan(previous, links, updated, NOW)
    assert (list(got.notify), list(got.waiting), got.reason) == expected


DELETION_CASES = [
    pytest.param(
        post(a=target(SENT), b=target(SENT, PB), c=target(FAILED), d=target(SKIPPED, None)),
        ([A], []),
        id="webmention-targets-that-have-it",
    ),
    pytest.param(post(a=target(ERROR), b=target(ERROR, retry_in=30)), ([A], [B]), id="pending-and-waiting"),
    pytest.param(
        PostRecord(BEFORE, {A: target(SENT, linked=False), B: target(ERROR, linked=False)}, gone=True),
        ([B], []),
        id="already-told-only-pending-again",
    ),
]


@pytest.mark.parametrize(("previous", "expected"), DELETION_CASES)
def test_plan_deletion(previous: PostRecord, expected: tuple[list[str], list[str]]) -> None:
    got = plan_deletion(previous, NOW)
    assert (list(got.notify), list(got.waiting), got.reason) == (*expected, "deleted")


def test_record_keeps_each_links_newest_result_and_pending_removals() -> None:
    previous = post(a=target(SENT), b=target(SENT), c=target(SENT, PB))
    outcomes = {
        A: Outcome(SENT, WM, "accepted"),
        B: Outcome(ERROR, WM, "the endpoint answered 503", retry_after=120),  # B was removed: still to be told
        D: Outcome(FAILED, WM, "refused it (400)"),
    }
    kept = record(previous, [A, C, D], None, outcomes, NOW)
    assert kept.checked == NOW
    assert kept.targets[A] == TargetRecord(SENT, NOW, WM, "accepted")
    assert kept.targets[C] == previous.targets[C]  # a pingback, not pinged again
    assert kept.targets[D].status is FAILED
    assert kept.targets[B] == TargetRecord(
        ERROR, NOW, WM, "the endpoint answered 503", NOW + timedelta(seconds=120), linked=False
    )
    assert kept.links == {A, C, D}
    told = record(kept, [A, C, D], None, {B: Outcome(SENT, WM, "accepted")}, NOW)
    assert B not in told.targets  # told of the removal: dropped


def test_record_of_an_unchanged_post_only_moves_checked() -> None:
    previous = post("2026-01-01", a=target(SENT))
    assert record(previous, [A], "2026-01-01", {}, NOW) == PostRecord(NOW, previous.targets, "2026-01-01")


def test_a_dry_run_changes_no_result() -> None:
    previous = post(a=target(SENT))
    kept = record(previous, [A, B], None, {A: Outcome(Status.DISCOVERED, WM), B: Outcome(Status.DISCOVERED, WM)}, NOW)
    assert kept.targets[A] == previous.targets[A]


def test_record_deletion_drops_the_post_once_all_are_told() -> None:
    previous = post(a=target(SENT), b=target(SENT))
    kept = record_deletion(previous, {A: Outcome(SENT, WM), B: Outcome(ERROR, WM, retry_after=5)}, NOW)
    assert kept is not None and kept.gone and set(kept.targets) == {B}
    assert record_deletion(kept, {B: Outcome(SENT, WM)}, NOW) is None


def test_unlisted() -> None:
    state = State({A: post(), B: post(), C: post()})
    assert unlisted(state, [B, D]) == (A, C)


def test_the_file_round_trips_and_reads_well() -> None:
    state = State(
        {
            "https://me.example/post": PostRecord(
                NOW,
                {
                    A: TargetRecord(SENT, NOW, WM, "accepted"),
                    B: TargetRecord(ERROR, NOW, PB, "fault 50", NOW + timedelta(seconds=30), linked=False),
                },
                "2026-12-01T10:00:00+00:00",
            ),
            "https://me.example/gone": PostRecord(NOW, {C: TargetRecord(ERROR, NOW, WM)}, gone=True),
        }
    )
    text = dumps(state)
    assert loads(text) == state
    assert dumps(loads(text)) == text  # stable: a CI cache key over it stays put
    assert text.startswith('{\n  "format": "pingforward-send-state",\n  "posts": {\n')
    assert '"retry_at": "2026-12-07T12:00:30Z"' in text and '"linked": false' in text


BAD_FILES = [
    pytest.param("", "not JSON", id="empty"),
    pytest.param('{"format": "pingforward-send-state", "version": 1, "posts": {', "not JSON", id="cut-short"),
    pytest.param("[]", "not a pingforward send state", id="not-an-object"),
    pytest.param('{"posts": {}}', "not a pingforward send state", id="no-format"),
    pytest.param(f'{{"format": "{FORMAT}", "version": 2, "posts": {{}}}}', "newer pingforward", id="newer"),
    pytest.param(f'{{"format": "{FORMAT}", "version": "1", "posts": {{}}}}', "version", id="version-string"),
    pytest.param(f'{{"format": "{FORMAT}", "version": 1, "posts": []}}', '"posts"', id="posts-list"),
    pytest.param(
        f'{{"format": "{FORMAT}", "version": 1, "posts": {{"u": {{"checked": "2026-01-01", "targets": {{"t": '
        '{"status": "maybe", "at": "2026-01-01"}}}}}',
        "unknown",
        id="unknown-status",
    ),
    pytest.param(
        f'{{"format": "{FORMAT}", "version": 1, "posts": {{"u": {{"checked": "yesterday", "targets": {{}}}}}}}}',
        "ISO 8601",
        id="bad-date",
    ),
    pytest.param("[" * 100_000 + "]" * 100_000, "not JSON", id="deep"),
]


@pytest.mark.parametrize(("text", "words"), BAD_FILES)
def test_an_unusable_file_is_an_error_never_a_fresh_start(text: str, words: str) -> None:
    with pytest.raises(StateError, match=words):
        loads(text)
