"""The pure parts of carrying a request to the node that owns its session (speakd.api.carry):
what goes with it, where it goes, and how a node's "no such reference" is told from an answer."""

from __future__ import annotations

import json

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from speakd.api.carry import CARRIED_BY, NO_SUCH_REFERENCE, _close_code, _not_there, carried_headers, target_url
from speakd.store.records import NodeAddress


def test_a_carried_request_takes_the_credential_the_request_id_and_the_carriers_name():
    headers = CIMultiDict(
        [
            ("Authorization", "Bearer t1"),
            ("Authorization", "Bearer t2"),  # each copy: the owner checks them all, as this node did
            ("Cookie", "accesskey=k; other=1"),
            ("Content-Type", "application/json"),
            ("Host", "node-a:8080"),
            ("X-Request-Id", "from-the-client"),
            (CARRIED_BY, "forged"),
            ("Accept-Encoding", "gzip"),
        ]
    )
    out = carried_headers(headers, "node-a", "rid-1")
    assert out.getall("Authorization") == ["Bearer t1", "Bearer t2"]
    assert out["Cookie"] == "accesskey=k; other=1" and out["Content-Type"] == "application/json"
    assert out["X-Request-Id"] == "rid-1" and out.getall(CARRIED_BY) == ["node-a"]
    assert set(out) == {"Authorization", "Cookie", "Content-Type", "X-Request-Id", CARRIED_BY}


def test_the_same_path_and_query_as_the_client_encoded_them_on_the_owner():
    request = make_mocked_request("POST", "/v1.0/speakings/s%2F1/say?accesskey=a%2Bb&x=1")
    url = target_url(NodeAddress("b", "http://10.0.0.2:8080/"), request)
    assert str(url) == "http://10.0.0.2:8080/v1.0/speakings/s%2F1/say?accesskey=a%2Bb&x=1"


def test_only_a_404_no_such_reference_means_not_there():
    def body(reason: str) -> bytes:
        return json.dumps({"error": {"status": 404, "message": "no call 'x'", "reason": reason}}).encode()

    assert _not_there(404, body(NO_SUCH_REFERENCE)) == "no call 'x'"
    assert _not_there(404, body("not_found")) is None  # another customer's call: an answer
    assert _not_there(409, body(NO_SUCH_REFERENCE)) is None
    assert _not_there(404, b"<html>") is None


def test_a_close_without_a_frame_is_passed_on_as_going_away():
    assert _close_code(1000) == 1000 and _close_code(4001) == 4001 and _close_code(1011) == 1011
    assert _close_code(None) == _close_code(1006) == _close_code(1005) == 1001
