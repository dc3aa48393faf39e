"""Credentials: ``?accesskey=``, ``?token=``, ``Authorization: Bearer <token>`` or the cookie ``accesskey``.

Access keys map to customer ids in the config. Tokens are HS256 JWTs signed with the
configured secret, carrying ``customer_id`` and ``exp``.

A request may carry more than one credential (a client that sends its key as a cookie and a
proxy that adds a token, say). Every one given must be valid and all must name the same
customer: a good credential does not excuse a bad one beside it, and two that disagree say
nothing certain about who is asking. Any of that is a 401. So is an empty one
(``?accesskey=``, ``Authorization:``): a credential that is sent is checked, even an empty one.
"""

from __future__ import annotations

import hmac

import jwt
from aiohttp import web

from speakd.errors import Unauthorized

COOKIE = "accesskey"
MISSING = (
    "credentials missing: pass ?accesskey=<key>, ?token=<jwt>, 'Authorization: Bearer <jwt>' "
    "or the cookie accesskey=<key>"
)


def _cookie_values(request: web.Request, name: str) -> list[str]:
    """Every value of cookie ``name`` in every Cookie header (a repeated cookie is not collapsed
    to one, so a bad copy cannot hide behind a good one)."""
    values = []
    for header in request.headers.getall("Cookie", []):
        for pair in header.split(";"):
            key, sep, value = pair.strip().partition("=")
            if sep and key.strip() == name:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                values.append(value)
    return values


class Authenticator:
    def __init__(self, access_keys: dict[str, str], jwt_secret: str) -> None:
        self.replace(access_keys, jwt_secret)

    def replace(self, access_keys: dict[str, str], jwt_secret: str) -> None:
        """Take new credentials (a reload): requests from now on are checked against them."""
        self._access_keys = dict(access_keys)
        self._jwt_secret = jwt_secret

    def customer_for(self, request: web.Request) -> str:
        customers: set[str] = set()
        for header in request.headers.getall("Authorization", []):
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthorized("Authorization header must be 'Bearer <token>'")
            customers.add(self._from_token(value.strip()))
        for token in request.query.getall("token", []):
            customers.add(self._from_token(token))
        for accesskey in request.query.getall("accesskey", []):
            customers.add(self._from_accesskey(accesskey, "accesskey"))
        for accesskey in _cookie_values(request, COOKIE):
            customers.add(self._from_accesskey(accesskey, "the accesskey cookie"))
        if not customers:
            raise Unauthorized(MISSING)
        if len(customers) > 1:
            raise Unauthorized("the credentials given name different customers; send the credentials of one")
        return customers.pop()

    def _from_accesskey(self, accesskey: str, where: str) -> str:
        if not accesskey:
            raise Unauthorized(f"{where} is empty; send a valid access key or leave it out")
        # Compare every key in constant time so timing does not reveal a near match.
        customer = ""
        for key, customer_id in self._access_keys.items():
            if hmac.compare_digest(key.encode(), accesskey.encode()):
                customer = customer_id
        if not customer:
            raise Unauthorized(f"{where} is not valid")
        return customer

    def _from_token(self, token: str) -> str:
        if not token:
            raise Unauthorized("token is empty; send a valid token or leave it out")
        if not self._jwt_secret:
            raise Unauthorized("tokens are not accepted by this speakd (no auth.jwt_secret configured); use accesskey")
        try:
            claims = jwt.decode(
                token, self._jwt_secret, algorithms=["HS256"], options={"require": ["exp", "customer_id"]}
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token has expired; obtain a new one") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"token is missing the '{exc.claim}' claim") from None
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"token is not valid: {exc}") from None
        customer_id = claims.get("customer_id")
        if not isinstance(customer_id, str) or not customer_id:
            raise Unauthorized("token's customer_id claim must be a non-empty string")
        return customer_id
