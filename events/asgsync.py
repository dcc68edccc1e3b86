"""Publishing a complete listing of security groups as whole-state messages.

Both ASG sources (the policy server's internal API and Cloud Controller) end the same way: the
watcher holds every group the source has now, and NATS must come to hold exactly those. Each
group is published as a `SecurityGroupMessage` (the publisher drops the ones that did not change),
and every group published before — in this run, or by an earlier run, as read back with
`StatePublisher.load_published` — that is missing from the listing gets an explicit null.

`collect_security_groups` is the parsing half both share: each raw group through the source's
lenient parser, bad rules dropped and described, unusable groups left out and described; unknown
keys (a newer CF's fields) are ignored without counting as dropped. `ParseCache` keeps that parsing
from being repeated for the groups that did not change since the last successful listing.

Callers must pass a *complete* listing: a failed or partial listing must never reach this
function, or its missing groups would be published as deleted.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from events import subjects
from events.messages import SecurityGroupMessage
from events.models import Problem, SecurityGroup, StateError
from events.publisher import StatePublisher

log = logging.getLogger(__name__)

ASG_SUBJECT_PREFIX = subjects.security_group("x")[:-1]


@dataclass(frozen=True, slots=True)
class SyncResult:
    """How many messages one sync published: changed or new groups, and deletions."""

    published: int
    deleted: int


async def publish_security_groups(
    publisher: StatePublisher, groups: Mapping[str, SecurityGroup], version: int
) -> SyncResult:
    """Make the state stream hold exactly `groups` (guid -> group), all with `version`."""
    published = await publisher.publish_all(
        SecurityGroupMessage(version=version, guid=guid, security_group=groups[guid]) for guid in sorted(groups)
    )
    gone = [
        subject[len(ASG_SUBJECT_PREFIX) :]
        for subject in sorted(publisher.published_subjects(ASG_SUBJECT_PREFIX))
        if subject[len(ASG_SUBJECT_PREFIX) :] not in groups
    ]
    deleted = await publisher.publish_all(
        SecurityGroupMessage(version=version, guid=guid, security_group=None) for guid in gone
    )
    for message in deleted:
        log.info("security group %s is gone: published its deletion", message.guid)
    await publisher.mark_complete(("asg",))  # the stream holds exactly the listing now
    return SyncResult(len(published), len(deleted))


GroupParser = Callable[[object], tuple[SecurityGroup, list[Problem]]]


class ParseCache:
    """A GroupParser that remembers its results by the raw group's JSON, from one listing to the next.

    A listing of thousands of groups mostly repeats the one before, and parsing is what it costs
    the watcher (every rule validated: about half a millisecond a group). Each listing parses
    through `with cache.listing() as parse:`. It holds the results of the last successful listing
    (reused) and of the current one; a listing that fails is forgotten when it fails, so however
    many fail in a row (each seeing other versions of the groups), memory stays bounded by two
    listings' worth.
    """

    def __init__(self, parse: GroupParser) -> None:
        self._parse = parse
        self._current: dict[str, tuple[SecurityGroup, list[Problem]] | StateError] = {}
        self._previous: dict[str, tuple[SecurityGroup, list[Problem]] | StateError] = {}

    def __len__(self) -> int:
        """How many parse results are held: the last successful listing's and the current one's."""
        return len(self._previous) + len(self._current)

    @contextlib.contextmanager
    def listing(self) -> Iterator[GroupParser]:
        """The parser for one listing; when the block ends without an exception, what it parsed is
        what the next listing may reuse."""
        self._current = {}
        try:
            yield self
            self._previous = self._current
        finally:
            self._current = {}

    def __call__(self, raw: object) -> tuple[SecurityGroup, list[Problem]]:
        key = json.dumps(raw, sort_keys=True, separators=(",", ":"))
        result = self._current.get(key) or self._previous.get(key)
        if result is None:
            try:
                result = self._parse(raw)
            except StateError as err:
                result = err
        self._current[key] = result
        if isinstance(result, StateError):
            # A fresh exception each time, so no traceback piles up on the cached one.
            raise StateError(result.problems, result.source, result.what)
        group, problems = result
        return group, list(problems)


def collect_security_groups(
    raws: Iterable[object], parse: GroupParser, groups: dict[str, SecurityGroup], problems: dict[str, str]
) -> None:
    """Parse raw groups into `groups` (by guid). What had to be dropped goes into `problems` as one
    line each, naming the group's guid and name and the rule's index; keyed, so a group listed
    twice (a default group in every space batch) is described once."""
    for raw in raws:
        where = _describe(raw)
        try:
            group, found = parse(raw)
            subjects.token(group.guid, "security group guid")
        except (StateError, ValueError) as err:
            reason = err.one_line() if isinstance(err, StateError) else str(err)
            problems[where] = f"security group {where}: left out entirely: {reason}"
            continue
        for problem in found:
            if problem.dropped:  # an unknown key cost nothing: the group and its rules are kept
                problems[f"{where} {problem.path}"] = f"security group {where}: {problem}"
        groups[group.guid] = group


def _describe(raw: object) -> str:
    """`guid (name)` of a raw group, as far as it has them."""
    if not isinstance(raw, dict):
        return repr(raw)[:60]
    return f"{raw.get('guid', '?')} ({raw.get('name', '?')})"
