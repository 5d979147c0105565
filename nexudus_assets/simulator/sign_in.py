"""Sign-in: Basic credentials, and the bearer tokens `POST /api/token` hands out."""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyotp

#: The administrator a simulator signs in unless told otherwise.
DEFAULT_USERNAME = "admin@example.com"
DEFAULT_PASSWORD = "simulator-password"


class _Totp(pyotp.TOTP):
    """Accepts the 80-bit secrets real authenticator apps hold, which pyotp refuses by default."""

    min_secret_length_bits = 80


class TokenError(Exception):
    """A refused token request; `answer` is the OAuth error body (HTTP 400)."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.answer = {"error": error, "error_description": description}


@dataclass(frozen=True)
class _Grant:
    user: str
    client_id: str
    expires_at: float


class Accounts:
    """One administrator account and the tokens issued to it."""

    def __init__(
        self,
        username: str,
        password: str,
        totp_secret: str | None,
        access_token_ttl: float,
        refresh_token_ttl: float,
        one_token_per_client_id: bool = False,
    ) -> None:
        self.username = username
        self._password = password
        self._totp = _Totp(totp_secret) if totp_secret else None
        #: As live accounts do: a sign-in voids the access and refresh tokens issued before to its client_id.
        self.one_token_per_client_id = one_token_per_client_id
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        self._lock = threading.Lock()
        #: Access token -> (expiry, client_id).
        self._access: dict[str, tuple[float, str]] = {}
        self._refresh: dict[str, _Grant] = {}
        self._issued: list[str] = []

    def _credentials_match(self, username: str, password: str) -> bool:
        # E-mail addresses are case-insensitive; passwords are not.
        same_user = secrets.compare_digest(username.strip().lower().encode(), self.username.lower().encode())
        return same_user & secrets.compare_digest(password.encode(), self._password.encode())

    def authenticate(self, header: str | None) -> str | None:
        """The user an `Authorization` header proves, or None."""
        scheme, _, credentials = (header or "").strip().partition(" ")
        credentials = credentials.strip()
        if scheme.lower() == "basic":
            try:
                username, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            return self.username if self._credentials_match(username, password) else None
        if scheme.lower() == "bearer":
            with self._lock:
                expires_at, _ = self._access.get(credentials, (0.0, ""))
            if time.time() < expires_at:
                return self.username
        return None

    def sign_in(self, form: dict[str, str], client_id: str | None) -> dict[str, Any]:
        if not self._credentials_match(form.get("username", ""), form.get("password", "")):
            raise TokenError("invalid_grant", "The user name or password is incorrect.")
        if self._totp is not None and not self._totp.verify(form.get("totp", ""), valid_window=1):
            raise TokenError("two_factor_auth_check", "A valid two-factor authentication code is required.")
        return self._issue(client_id or self.username, sign_in=True)

    def refresh(self, form: dict[str, str], client_id: str | None) -> dict[str, Any]:
        with self._lock:
            grant = self._refresh.get(form.get("refresh_token", ""))
            if grant is None or time.time() >= grant.expires_at:
                raise TokenError("invalid_grant", "The refresh token is invalid or has expired.")
            if (client_id or grant.user) != grant.client_id:
                raise TokenError("invalid_clientId", "Refresh token is issued to a different clientId.")
            del self._refresh[form["refresh_token"]]
        return self._issue(grant.client_id, sign_in=False)

    def revoke(self) -> None:
        with self._lock:
            self._access.clear()
            self._refresh.clear()

    def issued(self) -> list[str]:
        with self._lock:
            return list(self._issued)

    def _issue(self, client_id: str, *, sign_in: bool) -> dict[str, Any]:
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.time()
        with self._lock:
            if sign_in and self.one_token_per_client_id:
                self._access = {token: grant for token, grant in self._access.items() if grant[1] != client_id}
                self._refresh = {token: grant for token, grant in self._refresh.items() if grant.client_id != client_id}
            self._access[access] = (now + self.access_token_ttl, client_id)
            self._refresh[refresh] = _Grant(self.username, client_id, now + self.refresh_token_ttl)
            self._issued += [access, refresh]
        return {
            "access_token": access,
            "token_type": "bearer",
            "expires_in": int(self.access_token_ttl),
            "refresh_token": refresh,
        }
