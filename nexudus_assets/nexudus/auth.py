"""Basic and bearer authentication. Secrets live in `SecretStr` and never reach a repr."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import pyotp
from pydantic import SecretStr

from nexudus_assets.nexudus.errors import AuthenticationError, SignInRefusedError

AuthScheme = Literal["basic", "bearer"]

#: Sends a form-encoded POST to the token endpoint: (form, headers) -> (status, JSON answer).
TokenPost = Callable[[Mapping[str, str], Mapping[str, str]], tuple[int, Any]]


@dataclass(frozen=True)
class Credentials:
    username: str
    password: SecretStr
    #: A current one-time code (6-8 digits) or, better for scheduled runs, the base32 TOTP secret.
    totp: SecretStr | None = None

    def totp_code(self) -> str | None:
        if self.totp is None:
            return None
        value = self.totp.get_secret_value().strip()
        if value.isdigit() and 6 <= len(value) <= 8:
            return value
        return pyotp.TOTP(value.replace(" ", "").upper()).now()


class SignInRefusals:
    """Credentials an account refused in this process: no later client sends them again.

    A real account may lock out after repeated failed sign-ins, and every Dagster step makes
    a client of its own. Refusals are kept by server, user and an HMAC of the secrets under a
    key that exists only in this process: a corrected password is tried, and the memo holds
    nothing that reveals the password.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        #: (reason, status, request) only: a kept exception would keep its frames, secrets and all.
        self._refused: dict[tuple[str, str, str], tuple[str, int | None, str]] = {}

    def account(self, base_url: str, credentials: Credentials) -> tuple[str, str, str]:
        secret = "\0".join(
            value.get_secret_value() for value in (credentials.password, credentials.totp) if value is not None
        )
        digest = hmac.new(self._key, secret.encode(), hashlib.sha256).hexdigest()
        return base_url, credentials.username.strip().casefold(), digest

    def raise_if_refused(self, account: tuple[str, str, str]) -> None:
        with self._lock:
            refused = self._refused.get(account)
        if refused is not None:
            reason, status_code, request = refused
            raise SignInRefusedError(
                f"{reason}; refused earlier in this process, so not sent again"
                " (repeated failures can lock the account)",
                status_code=status_code,
                request=request,
            )

    def remember(self, account: tuple[str, str, str], refused: SignInRefusedError) -> None:
        with self._lock:
            self._refused.setdefault(account, (refused.reason, refused.status_code, refused.request))


#: One memo per process, shared by every client.
REFUSED_SIGN_INS = SignInRefusals()


class Auth(Protocol):
    def headers(self) -> dict[str, str]: ...

    def invalidate(self) -> bool:
        """Forget what was refused; True when a fresh attempt may succeed."""
        ...


class BasicAuth:
    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def headers(self) -> dict[str, str]:
        pair = f"{self._credentials.username}:{self._credentials.password.get_secret_value()}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}

    def invalidate(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"BasicAuth(username={self._credentials.username!r})"


class BearerAuth:
    """OAuth password grant with refresh before expiry; the refresh token rotates on each use."""

    def __init__(
        self,
        credentials: Credentials,
        post_token: TokenPost,
        *,
        client_id: str | None = None,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credentials = credentials
        self._post = post_token
        self._client_id = client_id or credentials.username
        self._refresh_margin = refresh_margin
        self._clock = clock
        self._lock = threading.Lock()
        self._access: SecretStr | None = None
        self._refresh: SecretStr | None = None
        self._renew_at = 0.0

    def headers(self) -> dict[str, str]:
        with self._lock:
            if self._access is None or self._clock() >= self._renew_at:
                self._renew()
            assert self._access is not None
            return {"Authorization": f"Bearer {self._access.get_secret_value()}"}

    def invalidate(self) -> bool:
        with self._lock:
            self._access = None
        return True

    def _renew(self) -> None:
        if self._refresh is not None:
            refreshed = self._exchange(
                {"grant_type": "refresh_token", "refresh_token": self._refresh.get_secret_value()},
                fail=False,
            )
            if refreshed:
                return
        form = {
            "grant_type": "password",
            "username": self._credentials.username,
            "password": self._credentials.password.get_secret_value(),
        }
        code = self._credentials.totp_code()
        if code is not None:
            form["totp"] = code
        self._exchange(form, fail=True)

    def _exchange(self, form: Mapping[str, str], *, fail: bool) -> bool:
        """Trade `form` for tokens; on refusal, False or (`fail`) an AuthenticationError."""
        status, answer = self._post(form, {"client_id": self._client_id})
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if status == 200 and token:
            self._access = SecretStr(str(token))
            refresh = answer.get("refresh_token")
            self._refresh = SecretStr(str(refresh)) if refresh else None
            lifetime = float(answer.get("expires_in") or 3600)
            # Renew ahead of expiry: by the margin, or by a tenth of a short-lived token's life.
            self._renew_at = self._clock() + lifetime - min(self._refresh_margin, lifetime / 10)
            return True
        self._refresh = None
        if not fail:
            return False
        reason = answer.get("error") if isinstance(answer, dict) else None
        description = answer.get("error_description") if isinstance(answer, dict) else None
        if reason == "two_factor_auth_check":
            message = "sign-in needs a two-factor code: set NEXUDUS_TOTP to the account's TOTP secret"
        else:
            message = f"sign-in refused: {reason or 'no token in the answer'}"
            if description:
                message += f" ({description})"
        # 400 is OAuth's answer to a wrong password (`invalid_grant`), 401/403 the Nexudus one.
        refusal = SignInRefusedError if status in (400, 401, 403) else AuthenticationError
        raise refusal(message, status_code=status, request="POST /token")

    def __repr__(self) -> str:
        return f"BearerAuth(username={self._credentials.username!r}, client_id={self._client_id!r})"
