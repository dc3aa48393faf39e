"""Schemathesis hooks (loaded through SCHEMATHESIS_HOOKS by tests/integration/test_schemathesis.py).

Random reference ids name no call, so every create would be a 404 and nothing after it (say,
flush, stop, delete) would be reached with a real session. A create that schemathesis means to be
valid gets the id of the real call the test placed (SPEAKD_SCHEMATHESIS_CALL_ID) instead: the
first makes a session on it, later ones are 409 until that session is stopped or deleted.
"""

from __future__ import annotations

import os

import schemathesis
from schemathesis.generation import GenerationMode


@schemathesis.hook
def map_case(context, case):
    operation = context.operation
    if operation is None or (operation.method.upper(), operation.path) != ("POST", "/v1.0/speakings"):
        return case
    positive = case.meta is None or case.meta.generation.mode == GenerationMode.POSITIVE
    body = case.body
    if positive and isinstance(body, dict) and isinstance(body.get("reference_id"), str):
        body["reference_type"] = "call"
        body["reference_id"] = os.environ["SPEAKD_SCHEMATHESIS_CALL_ID"]
    return case
