"""Operators' questions a reconciler answers over NATS request/reply, from what it committed to
its kernel (not from what it is about to write): `cfnft explain --cell`.

Answers are JSON; a question that cannot be answered is `{"error": ..., "bad_input": bool}`."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from events import subjects
from reconciler.explain import ExplainInputError, Probe, explain

if TYPE_CHECKING:
    from reconciler.daemon import Reconciler

log = logging.getLogger(__name__)


def answer_explain(rec: Reconciler, data: bytes) -> dict:
    try:
        request = json.loads(data or b"{}")
        if not isinstance(request, dict) or not isinstance(request.get("source"), str):
            raise ExplainInputError('the request must be {"source": HANDLE, "to": "PROTO:IP[:PORT]"}')
        probe = Probe.parse(str(request.get("to", "")))
        if rec.committed is None:
            return {"error": "nothing committed to the kernel yet", "bad_input": False}
        state, ruleset = rec.committed
        found = explain(state, request["source"], probe, established=bool(request.get("established")), ruleset=ruleset)
        return found.model_dump(mode="json")
    except (ExplainInputError, ValueError) as e:
        return {"error": str(e), "bad_input": True}


async def serve_operator_requests(rec: Reconciler, nc: NATS) -> None:
    """Subscribe this cell's operator subjects on `nc`."""

    async def on_explain(m: Msg) -> None:
        await m.respond(json.dumps(answer_explain(rec, m.data)).encode())

    await nc.subscribe(subjects.explain(rec.config.cell_id), cb=on_explain)
