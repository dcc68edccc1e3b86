"""The security groups a simulator holds, and the scenario methods that edit them.

Cloud Controller owns security groups; the policy server holds the asg-syncer's copy of them in
rows with an increasing id (docs/cf-facts.md §1.3, §1.5). Both simulators keep them the same way —
rows in creation order, each with an id that paging uses — and are edited through the same
methods, which play an operator's v3 writes (`cf create-security-group`, `bind-security-group`,
...). Rules are stored as given (CC omits keys that were not set) and are not validated, so tests
can feed a watcher rules that CC's validator would have refused.

A simulator mixes `SecurityGroupScenario` in and overrides `_security_groups_changed` to move its
change stamp.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Lifecycle = Literal["running", "staging"]


@dataclass(slots=True)
class SecurityGroupRow:
    """One group: CC's v3 resource, with the row id the policy server's store pages by."""

    id: int
    guid: str
    name: str
    rules: list[dict[str, Any]]
    running_default: bool
    staging_default: bool
    running_spaces: list[str]
    staging_spaces: list[str]
    created_at: datetime
    updated_at: datetime


class SecurityGroupScenario:
    """Security groups and their editing (see the module docstring)."""

    def __init__(self) -> None:
        self.security_groups: dict[str, SecurityGroupRow] = {}
        self._next_row_id = 1

    def add_security_group(
        self,
        name: str,
        rules: list[dict[str, Any]],
        *,
        guid: str | None = None,
        running_default: bool = False,
        staging_default: bool = False,
        running_spaces: tuple[str, ...] = (),
        staging_spaces: tuple[str, ...] = (),
    ) -> str:
        """Create a group; `running_default`/`staging_default` are CC's `globally_enabled` flags.
        Returns its guid."""
        guid = guid or str(uuid.uuid4())
        if guid in self.security_groups:
            raise ValueError(f"security group {guid} already exists")
        now = datetime.now(UTC)
        self.security_groups[guid] = SecurityGroupRow(
            self._next_row_id,
            guid,
            name,
            [dict(r) for r in rules],
            running_default,
            staging_default,
            list(running_spaces),
            list(staging_spaces),
            now,
            now,
        )
        self._next_row_id += 1
        self._security_groups_changed(guid)
        return guid

    def update_security_group(
        self,
        guid: str,
        *,
        name: str | None = None,
        rules: list[dict[str, Any]] | None = None,
        running_default: bool | None = None,
        staging_default: bool | None = None,
    ) -> None:
        """Change a group in place (its row keeps its id, as the syncer's upsert does)."""
        row = self.security_group(guid)
        if name is not None:
            row.name = name
        if rules is not None:
            row.rules = [dict(r) for r in rules]
        if running_default is not None:
            row.running_default = running_default
        if staging_default is not None:
            row.staging_default = staging_default
        self._security_groups_changed(guid)

    def bind_security_group(self, guid: str, space_guid: str, lifecycle: Lifecycle) -> None:
        spaces = self._spaces(guid, lifecycle)
        if space_guid not in spaces:
            spaces.append(space_guid)
        self._security_groups_changed(guid)

    def unbind_security_group(self, guid: str, space_guid: str, lifecycle: Lifecycle) -> None:
        spaces = self._spaces(guid, lifecycle)
        if space_guid in spaces:
            spaces.remove(space_guid)
        self._security_groups_changed(guid)

    def delete_security_group(self, guid: str) -> None:
        del self.security_groups[self.security_group(guid).guid]
        self._security_groups_changed(None)

    def security_group(self, guid: str) -> SecurityGroupRow:
        try:
            return self.security_groups[guid]
        except KeyError:
            raise KeyError(f"no security group {guid} in the {type(self).__name__}") from None

    def security_group_rows(self) -> list[SecurityGroupRow]:
        """Every group in row-id order (the order both CC and the policy server list them in)."""
        return sorted(self.security_groups.values(), key=lambda row: row.id)

    def _spaces(self, guid: str, lifecycle: Lifecycle) -> list[str]:
        row = self.security_group(guid)
        return row.running_spaces if lifecycle == "running" else row.staging_spaces

    def _security_groups_changed(self, guid: str | None) -> None:
        """A write happened (to `guid`, or a deletion): move the simulator's change stamp."""
        if guid is not None:
            self.security_groups[guid].updated_at = datetime.now(UTC)
