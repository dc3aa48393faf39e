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
    # Valid for a day: some are made at import, and the whole suite runs for minutes before these.
    return jwt.encode({"exp": int(time.time()) + 86400, **claims}, SECRET, algorithm="HS256")


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


# -- the accesskey cookie, and several credentials at once ---------------------------------

auth2 = Authenticator({"key-a": "cust-a", "key-b": "cust-b"}, SECRET)


@pytest.mark.parametrize(
    "cookie",
    ["accesskey=key-a", "theme=dark; accesskey=key-a", 'accesskey="key-a"', " accesskey=key-a ;lang=en"],
)
def test_accesskey_cookie(cookie):
    assert auth2.customer_for(request("/v1.0/speakings", {"Cookie": cookie})) == "cust-a"


def test_wrong_cookie_is_401_naming_the_cookie():
    with pytest.raises(Unauthorized, match="cookie is not valid"):
        auth2.customer_for(request("/x", {"Cookie": "accesskey=nope"}))


def test_other_cookies_are_not_credentials():
    with pytest.raises(Unauthorized, match=r"missing.*cookie accesskey"):
        auth2.customer_for(request("/x", {"Cookie": "session=key-a; xaccesskey=key-a"}))


GOOD_TOKEN = make_token(customer_id="cust-a")
BAD_TOKEN = make_token(customer_id="cust-a") + "x"


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        # Good + bad, in every pairing of the four ways to pass a credential.
        ("/x?accesskey=key-a", {"Cookie": "accesskey=nope"}),
        ("/x?accesskey=nope", {"Cookie": "accesskey=key-a"}),
        (f"/x?accesskey=nope&token={GOOD_TOKEN}", None),
        (f"/x?accesskey=key-a&token={BAD_TOKEN}", None),
        ("/x?accesskey=nope", {"Authorization": f"Bearer {GOOD_TOKEN}"}),
        ("/x?accesskey=key-a", {"Authorization": f"Bearer {BAD_TOKEN}"}),
        ("/x", {"Cookie": "accesskey=nope", "Authorization": f"Bearer {GOOD_TOKEN}"}),
        ("/x", {"Cookie": "accesskey=key-a", "Authorization": f"Bearer {BAD_TOKEN}"}),
        ("/x", {"Cookie": "accesskey=key-a", "Authorization": "Basic eDp5"}),
        (f"/x?token={GOOD_TOKEN}", {"Authorization": f"Bearer {BAD_TOKEN}"}),
        (f"/x?token={BAD_TOKEN}", {"Authorization": f"Bearer {GOOD_TOKEN}"}),
        (f"/x?token={GOOD_TOKEN}", {"Cookie": "accesskey=nope"}),
        # A repeated parameter or cookie: a bad copy does not hide behind a good one.
        ("/x?accesskey=key-a&accesskey=nope", None),
        ("/x?accesskey=nope&accesskey=key-a", None),
        ("/x", {"Cookie": "accesskey=key-a; accesskey=nope"}),
        ("/x", {"Cookie": "accesskey=nope; accesskey=key-a"}),
    ],
)
def test_a_good_credential_beside_a_bad_one_is_401(path, headers):
    with pytest.raises(Unauthorized, match=r"not valid|Bearer"):
        auth2.customer_for(request(path, headers))


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        ("/x?accesskey=key-a", {"Cookie": "accesskey=key-b"}),
        (f"/x?token={make_token(customer_id='cust-b')}", {"Cookie": "accesskey=key-a"}),
        ("/x?accesskey=key-b", {"Authorization": f"Bearer {GOOD_TOKEN}"}),
    ],
)
def test_good_credentials_of_two_customers_are_401(path, headers):
    with pytest.raises(Unauthorized, match="different customers"):
        auth2.customer_for(request(path, headers))


def test_several_good_credentials_of_one_customer_pass():
    headers = {"Cookie": "accesskey=key-a", "Authorization": f"Bearer {GOOD_TOKEN}"}
    assert auth2.customer_for(request(f"/x?accesskey=key-a&token={GOOD_TOKEN}", headers)) == "cust-a"


@pytest.mark.parametrize(
    ("path", "headers", "says"),
    [
        ("/x?accesskey=", {"Cookie": "accesskey=key-a"}, "accesskey is empty"),
        ("/x?token=", {"Cookie": "accesskey=key-a"}, "token is empty"),
        ("/x?accesskey=key-a", {"Cookie": "accesskey="}, "cookie is empty"),
        ("/x?accesskey=key-a", {"Authorization": ""}, "Bearer"),
        ("/x?accesskey=key-a", {"Authorization": "Bearer "}, "Bearer"),
    ],
)
def test_an_empty_credential_beside_a_good_one_is_401(path, headers, says):
    # A credential sent is checked, even an empty one: the client meant to send something.
    with pytest.raises(Unauthorized, match=says):
        auth2.customer_for(request(path, headers))
