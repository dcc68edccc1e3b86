"""A JSON control endpoint on the BBS simulator, so a demo can drive it from a shell.

    POST /sim/<scenario method>   body: a JSON object of the method's keyword arguments
                                  -> 200 {"result": <return value>}, 400 {"error": "..."}, 404 unknown method
    GET  /sim/state               {"desired_lrps": [...], "actual_lrps": [...], "tasks": [...]} (proto field names)

It is served by the simulator itself, so it takes the same client certificates, e.g.

    curl --cacert ca.pem --cert client.pem --key client.key -d '{"app_guid": "a", "space_guid": "s",
         "org_guid": "o", "cells": ["cell-a"]}' https://127.0.0.1:8889/sim/push_app

Egress rules are given as Cloud Controller rules ({"protocol", "destination", "ports", "type",
"code", "log"}, plus "annotations") and converted the way CC converts them; a fault's `route` is
the API path and `error_type` an Error.Type name such as "Deadlock".
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web
from google.protobuf import json_format

from events.bbs import bbs_pb2 as pb
from lab.sim.bbs import BbsRoute, BbsSimulator, egress_rule

SCENARIO_METHODS = frozenset(
    {
        "desire_lrp",
        "push_app",
        "update_egress_rules",
        "scale",
        "remove_lrp",
        "start_instance",
        "stop_instance",
        "crash",
        "evacuate",
        "mark_suspect",
        "desire_task",
        "start_task",
        "complete_task",
        "delete_task",
        "fail",
        "fail_with_error",
        "delay",
        "clear_faults",
        "drop_streams",
        "stall_streams",
    }
)


def add_control_routes(sim: BbsSimulator) -> None:
    """Serve `/sim/...` on `sim` (call before `sim.start()`)."""

    async def call(request: web.Request) -> web.Response:
        name = request.match_info["method"]
        if name not in SCENARIO_METHODS:
            return web.json_response({"error": f"no scenario method {name!r}"}, status=404)
        try:
            body = json.loads(await request.text() or "{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object of keyword arguments")
            result = getattr(sim, name)(**_arguments(body))
        except (KeyError, ValueError, TypeError) as err:
            return web.json_response({"error": f"{name}: {err}"}, status=400)
        return web.json_response({"result": result})

    async def state(request: web.Request) -> web.Response:
        def dicts(messages: list[Any]) -> list[dict[str, Any]]:
            return [json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages]

        return web.json_response(
            {
                "desired_lrps": dicts(sim.desired_lrps()),
                "actual_lrps": dicts(sim.actual_lrps()),
                "tasks": dicts(sim.tasks()),
            }
        )

    sim.app.router.add_get("/sim/state", state)
    sim.app.router.add_post("/sim/{method}", call)


def _arguments(body: dict[str, Any]) -> dict[str, Any]:
    """JSON keyword arguments -> the Python values the scenario methods take."""
    args = dict(body)
    if "egress_rules" in args:
        args["egress_rules"] = [_rule(r) for r in args["egress_rules"]]
    if args.get("route") is not None:
        args["route"] = BbsRoute(args["route"])
    if "error_type" in args:
        args["error_type"] = pb.Error.Type.Value(args["error_type"])
    return args


def _rule(rule: dict[str, Any]) -> pb.SecurityGroupRule:
    rule = dict(rule)
    rule.pop("description", None)  # CC's free text; BBS rules carry annotations instead
    return egress_rule(
        rule.pop("protocol"),
        rule.pop("destination"),
        rule.pop("ports", None),
        icmp_type=rule.pop("type", None),
        icmp_code=rule.pop("code", None),
        log=rule.pop("log", False),
        annotations=rule.pop("annotations", ()),
        **rule,  # anything else is an error naming the key
    )
