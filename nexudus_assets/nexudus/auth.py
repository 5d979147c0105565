"""Basic and bearer authentication. Secrets live in `SecretStr` and never reach a repr."""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import pyotp
from pydantic import SecretStr

from nexudus_assets.nexudus.entities import ENTITIES, entity_of
from nexudus_assets.nexudus.errors import AuthenticationError, SignInRefusedError

AuthScheme = Literal["basic", "bearer"]

#: Sends a form-encoded POST to the token endpoint: (form, headers) -> (status, JSON answer).
TokenPost = Callable[[Mapping[str, str], Mapping[str, str]], tuple[int, Any]]
#: Used when a token answer's `expires_in` is missing, unreadable or too short to be true.
FALLBACK_TOKEN_LIFETIME = 3600.0
#: An `expires_in` below this is not believed: renewing before nearly every request costs a
#: sign-in each time, and every sign-in counts against the write limits.
MIN_TOKEN_LIFETIME = 60.0

log = logging.getLogger(__name__)


class TotpSecretError(AuthenticationError):
    """NEXUDUS_TOTP holds neither a current code nor a base32 secret pyotp can use."""


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
        return totp_now(value)


class Totp(pyotp.TOTP):
    """pyotp's TOTP, also for the 80-bit (16-character) secrets authenticator apps commonly hold.

    pyotp asks for 112 bits by default; RFC 4226 accepts 80 and many accounts have exactly that.
    """

    min_secret_length_bits = 80


def totp_now(secret: str) -> str:
    """The current code of a base32 TOTP secret; spaces, dashes and a missing `=` padding are fine."""
    normalised = secret.replace(" ", "").replace("-", "").upper().rstrip("=")
    try:
        return Totp(normalised + "=" * (-len(normalised) % 8)).now()
    except (ValueError, TypeError) as exc:
        # pyotp's message never repeats the secret; the length helps find a truncated paste.
        raise TotpSecretError(
            f"NEXUDUS_TOTP is neither a 6-8 digit code nor a usable base32 TOTP secret"
            f" ({len(normalised)} characters: {exc})"
        ) from None


class SignInRefusals:
    """Credentials an account refused in this process: no later client sends them again.

    A real account may lock out after repeated failed sign-ins, and every Dagster step makes
    a client of its own. Refusals are kept by server, user and an HMAC of the secrets under a
    key that exists only in this process: a corrected password is tried, and the memo holds
    nothing that reveals the password.

    A 401 does not tell bad credentials from a missing role. With bearer auth the token
    endpoint tells: only its refusal is a refused sign-in. Basic credentials travel with every
    request, so a refusal of them is told by its breadth: once every entity's endpoint has
    refused them in this process, with no answer accepted in between, they are taken as wrong.
    Until then each refusal fails that endpoint alone, as a missing role.
    """

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        #: (reason, status, request) only: a kept exception would keep its frames, secrets and all.
        self._refused: dict[tuple[str, str, str], tuple[str, int | None, str]] = {}
        #: Entity paths that refused an account's Basic credentials since it last had an answer accepted.
        self._denied: dict[tuple[str, str, str], set[str]] = {}

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

    def accepted(self, account: tuple[str, str, str]) -> None:
        """An answer other than a refusal came: the credentials work."""
        if account in self._denied:  # unlocked read first: the common case costs no lock
            with self._lock:
                self._denied.pop(account, None)

    def denied_everywhere(self, account: tuple[str, str, str], entity_path: str | None) -> bool:
        """Note that `entity_path` refused the account's Basic credentials; True once every entity's has."""
        with self._lock:
            denied = self._denied.setdefault(account, set())
            if entity_path is not None:
                denied.add(entity_path)
            return denied >= {entity.path for entity in ENTITIES}


def required_role(method: str, path: str) -> str | None:
    """The Nexudus role a request needs, such as `CoworkerTimePass-List`; None off the entity endpoints."""
    entity = entity_of(path)
    if entity is None:
        return None
    tail = path.strip("/")[len(entity.path) :].strip("/")
    if method == "GET":
        action = "List" if tail in ("", "commands") else "Read"
    elif method == "POST":
        action = "Create" if tail == "" else "Edit"  # `runcommand` changes existing records
    elif method == "DELETE":
        action = "Delete"
    else:
        action = "Edit"
    return f"{entity.name}-{action}"


#: One memo per process, shared by every client.
REFUSED_SIGN_INS = SignInRefusals()


class Auth(Protocol):
    def headers(self, post_token: TokenPost) -> dict[str, str]:
        """The `Authorization` header; `post_token` reaches the token endpoint when a sign-in is due."""
        ...

    def invalidate(self) -> bool:
        """Forget what was refused; True when a fresh attempt may succeed."""
        ...


class BasicAuth:
    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials

    def headers(self, post_token: TokenPost) -> dict[str, str]:
        pair = f"{self._credentials.username}:{self._credentials.password.get_secret_value()}"
        return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}

    def invalidate(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"BasicAuth(username={self._credentials.username!r})"


class BearerAuth:
    """An OAuth session: one password grant, then refreshes before expiry; the refresh token rotates.

    Nexudus keeps one token per `client_id`: a new sign-in invalidates the access and refresh
    tokens issued before for it. So a session is shared by every client of a run rather than
    each signing in, and each exchange is sent through the client asking at that moment.
    """

    def __init__(
        self,
        credentials: Credentials,
        *,
        client_id: str | None = None,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._credentials = credentials
        self._client_id = client_id or credentials.username
        self._refresh_margin = refresh_margin
        self._clock = clock
        self._lock = threading.Lock()
        self._access: SecretStr | None = None
        self._refresh: SecretStr | None = None
        self._renew_at = 0.0
        #: Password grants this session made (refreshes not counted): each is a sign-in at the account.
        self.password_grants = 0

    @property
    def credentials(self) -> Credentials:
        return self._credentials

    def headers(self, post_token: TokenPost) -> dict[str, str]:
        with self._lock:
            if self._access is None or self._clock() >= self._renew_at:
                self._renew(post_token)
            assert self._access is not None
            return {"Authorization": f"Bearer {self._access.get_secret_value()}"}

    def invalidate(self) -> bool:
        with self._lock:
            self._access = None
        return True

    def _renew(self, post_token: TokenPost) -> None:
        if self._refresh is not None:
            refreshed = self._exchange(
                post_token,
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
        self.password_grants += 1
        self._exchange(post_token, form, fail=True)

    def _exchange(self, post_token: TokenPost, form: Mapping[str, str], *, fail: bool) -> bool:
        """Trade `form` for tokens; on refusal, False or (`fail`) an AuthenticationError."""
        status, answer = post_token(form, {"client_id": self._client_id})
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if status == 200 and token:
            self._access = SecretStr(str(token))
            refresh = answer.get("refresh_token")
            self._refresh = SecretStr(str(refresh)) if refresh else None
            lifetime = token_lifetime(answer.get("expires_in"))
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


def token_lifetime(expires_in: Any) -> float:
    """Seconds a token lasts, from `expires_in`; missing, unreadable or under a minute: the fallback."""
    try:
        lifetime = float(expires_in)
    except (TypeError, ValueError):
        lifetime = float("nan")
    if not lifetime >= MIN_TOKEN_LIFETIME or lifetime == float("inf"):
        log.warning(
            "the token answer's expires_in (%r) is missing, not a number or under %gs; assuming %gs",
            expires_in if isinstance(expires_in, int | float) else type(expires_in).__name__,
            MIN_TOKEN_LIFETIME,
            FALLBACK_TOKEN_LIFETIME,
        )
        return FALLBACK_TOKEN_LIFETIME
    return lifetime
