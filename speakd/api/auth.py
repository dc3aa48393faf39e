"""Credentials: ``?accesskey=``, ``?token=`` or ``Authorization: Bearer <token>``.

Access keys map to customer ids in the config. Tokens are HS256 JWTs signed with the
configured secret, carrying ``customer_id`` and ``exp``.
"""

from __future__ import annotations

import hmac

import jwt
from aiohttp import web

from speakd.errors import Unauthorized


class Authenticator:
    def __init__(self, access_keys: dict[str, str], jwt_secret: str) -> None:
        self._access_keys = dict(access_keys)
        self._jwt_secret = jwt_secret

    def customer_for(self, request: web.Request) -> str:
        accesskey = request.query.get("accesskey")
        token = request.query.get("token")
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise Unauthorized("Authorization header must be 'Bearer <token>'")
            token = value.strip()
        if token:
            return self._from_token(token)
        if accesskey:
            return self._from_accesskey(accesskey)
        raise Unauthorized("credentials missing: pass ?accesskey=<key>, ?token=<jwt> or 'Authorization: Bearer <jwt>'")

    def _from_accesskey(self, accesskey: str) -> str:
        # Compare every key in constant time so timing does not reveal a near match.
        customer = ""
        for key, customer_id in self._access_keys.items():
            if hmac.compare_digest(key.encode(), accesskey.encode()):
                customer = customer_id
        if not customer:
            raise Unauthorized("accesskey is not valid")
        return customer

    def _from_token(self, token: str) -> str:
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
