"""What the reconciler keeps on disk: the CNI registrations and the last committed state.

Both let a restart enforce everything at once, before (or without) NATS. The directory is
`state_dir`, created 0700; the files are written atomically (a temporary file renamed over
the old one) and 0600, because they name every container, address and policy of the cell.

Reading is per entry: one registration the current checks refuse, or that no longer parses,
is logged and dropped alone; the others are kept.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pydantic import ValidationError

from events.models import CellState, Container
from events.problems import problems_from
from reconciler.admission import Limits, container_problems

log = logging.getLogger(__name__)


class SavedState:
    def __init__(self, state_dir: Path, cell_id: str) -> None:
        self.dir = state_dir
        self.registrations_file = state_dir / f"registered-{cell_id}.json"
        self.snapshot_file = state_dir / f"last-state-{cell_id}.json"

    def save_registrations(self, containers: list[Container]) -> None:
        """The CNI registrations, oldest first."""
        _atomic_write(self.registrations_file, json.dumps([c.model_dump(mode="json") for c in containers]))

    def load_registrations(self, limits: Limits) -> list[Container]:
        try:
            entries = json.loads(self.registrations_file.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.error("ignoring unreadable %s: %s", self.registrations_file, e)
            return []
        if not isinstance(entries, list):
            log.error("ignoring %s: not a list of containers", self.registrations_file)
            return []
        kept = []
        for i, raw in enumerate(entries):
            try:
                c = Container.model_validate(raw)
            except ValidationError as e:
                log.error("%s: dropping entry %d: %s", self.registrations_file, i, problems_from(e)[0])
                continue
            problems = container_problems(c, limits)
            if problems:
                log.error("%s: dropping container %s: %s", self.registrations_file, c.handle, "; ".join(problems))
                continue
            kept.append(c)
        return kept

    def save_snapshot(self, state: CellState) -> None:
        _atomic_write(self.snapshot_file, state.model_dump_json())

    def load_snapshot(self) -> CellState | None:
        try:
            return CellState.model_validate_json(self.snapshot_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.error("ignoring unreadable %s: %s", self.snapshot_file, e)
            return None


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)  # also when an earlier release created it world-readable
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)  # a leftover temporary file keeps the mode it was created with
    os.replace(tmp, path)
