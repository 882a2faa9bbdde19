"""Login with MONAI Label's auth settings that works: token verification and ``POST /auth/token``.

MONAI Label 0.8.5 verifies a bearer token with ``jwt.decode`` and no ``algorithms``, which the
PyJWT it runs with (2.x) refuses for every token: with ``MONAI_LABEL_AUTH_ENABLE`` each request
is 401, Keycloak's tokens included. :func:`user_from_token` does the same verification (the
realm's public key from ``MONAI_LABEL_AUTH_REALM_URI``, the user name and roles from the claims
the ``MONAI_LABEL_AUTH_TOKEN_*`` settings name) with the asymmetric algorithms named, and
:func:`register_auth_route` makes MONAI Label call it.

MONAI Label's route passes the form on to the realm's token endpoint (Keycloak's, or the
embedded one of ``main.py serve --auth``) with the same ``password`` grant, but turns the realm's
refusal into a 500, and waits for the realm inside the server's event loop, so every other
request waits too. This route does the same exchange in a worker thread and answers 401 for
refused credentials, 502 when the realm cannot be reached.
"""


import logging

from lib.endpoints.routes import add_route_first

__all__ = ["register_auth_route", "user_from_token", "VERIFY_ALGORITHMS"]

#: signature algorithms a realm's public key may sign with (never a shared-secret one)
VERIFY_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"]


def user_from_token(token: str):
    """The :class:`monailabel.endpoints.user.auth.User` a realm's token names.

    Raises:
        jwt.InvalidTokenError: a bad signature, an expired token, or one without ``exp`` or a
            user name.
    """
    import jwt
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import DEFAULT_USER, User, get_public_key

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return DEFAULT_USER
    key = get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
    payload = jwt.decode(token, key, algorithms=VERIFY_ALGORITHMS,
                         options={"verify_aud": False, "require": ["exp"]})
    username = payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME)
    if not isinstance(username, str) or not username:
        raise jwt.InvalidTokenError(f"the token has no {settings.MONAI_LABEL_AUTH_TOKEN_USERNAME!r} claim")
    roles = payload
    for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):
        roles = roles.get(part) if isinstance(roles, dict) else None
    return User(username=username,
                email=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_EMAIL),
                name=payload.get(settings.MONAI_LABEL_AUTH_TOKEN_NAME),
                roles=list(roles) if isinstance(roles, list) else [])

logger = logging.getLogger(__name__)


def register_auth_route(fastapi_app) -> None:
    """With auth enabled: make MONAI Label verify tokens with :func:`user_from_token`, and put
    the token route, and ``POST /reload`` for admins only, in front of MONAI Label's."""
    import requests
    from fastapi import Depends, HTTPException
    from fastapi.security import OAuth2PasswordRequestForm
    from monailabel.config import settings
    from monailabel.endpoints.user import auth
    from monailabel.endpoints.user.auth import token_uri
    from monailabel.interfaces.utils.app import clear_cache

    if not settings.MONAI_LABEL_AUTH_ENABLE:
        return
    auth.from_token = user_from_token  # what auth.get_current_user calls for every request

    def access_token(form_data: OAuth2PasswordRequestForm = Depends()):
        data = {"client_id": settings.MONAI_LABEL_AUTH_CLIENT_ID, "username": form_data.username,
                "password": form_data.password, "grant_type": "password"}
        try:
            response = requests.post(token_uri(), data=data, timeout=settings.MONAI_LABEL_AUTH_TIMEOUT)
        except requests.RequestException as exc:
            logger.error("the login realm %s cannot be reached: %s", settings.MONAI_LABEL_AUTH_REALM_URI, exc)
            raise HTTPException(502, "the login service cannot be reached") from exc
        if response.status_code in (400, 401, 403):
            raise HTTPException(401, "wrong user name or password", headers={"WWW-Authenticate": "Bearer"})
        if not response.ok:
            raise HTTPException(502, f"the login service answered {response.status_code}")
        return response.json()

    def reload_app(user: auth.User = Depends(auth.RBAC(settings.MONAI_LABEL_AUTH_ROLE_ADMIN))):
        clear_cache()
        return {}

    add_route_first(fastapi_app, f"{settings.MONAI_LABEL_API_STR}/auth/token", access_token, ["POST"])
    add_route_first(fastapi_app, "/reload", reload_app, ["POST"])  # MONAI Label's re-creates the app for anyone
