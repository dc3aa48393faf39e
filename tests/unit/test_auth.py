from __future__ import annotations

import time

import jwt
import pytest
from aiohttp.test_utils import make_mocked_request

from speakd.api.auth import Authenticator
from speakd.errors import Unauthorized

SECRET = "unit-test-secret-0123456789abcdef"
auth = Authenticator({"key-a": "cust-a"}, SECRET)


def request(path: str, headers: dict | None = None):
    return make_mocked_request("GET", path, headers=headers or {})


def make_token(**claims) -> str:
    return jwt.encode({"exp": int(time.time()) + 60, **claims}, SECRET, algorithm="HS256")


def test_accesskey_token_and_bearer():
    assert auth.customer_for(request("/v1.0/speakings?accesskey=key-a")) == "cust-a"
    assert auth.customer_for(request(f"/v1.0/speakings?token={make_token(customer_id='cust-t')}")) == "cust-t"
    bearer = {"Authorization": f"Bearer {make_token(customer_id='cust-b')}"}
    assert auth.customer_for(request("/v1.0/speakings", bearer)) == "cust-b"


@pytest.mark.parametrize(
    ("path", "headers", "word"),
    [
        ("/x", None, "missing"),
        ("/x?accesskey=nope", None, "accesskey"),
        ("/x?token=abc", None, "not valid"),
        (f"/x?token={make_token()}", None, "customer_id"),
        ("/x", {"Authorization": "Token abc"}, "Bearer"),
    ],
)
def test_rejections_say_why(path, headers, word):
    with pytest.raises(Unauthorized, match=word):
        auth.customer_for(request(path, headers))


def test_expired_token():
    expired = jwt.encode({"exp": int(time.time()) - 5, "customer_id": "c"}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="expired"):
        auth.customer_for(request(f"/x?token={expired}"))


def test_tokens_refused_without_a_secret():
    with pytest.raises(Unauthorized, match="jwt_secret"):
        Authenticator({}, "").customer_for(request(f"/x?token={make_token(customer_id='c')}"))
