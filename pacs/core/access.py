"""Who may see what: roles, credentials, the studies a caller may see, login throttling.

Pure rules, no storage and no network: the index keeps users, tokens,
sessions, shares and the audit trail (``pacs.index.base.AccessStore``), the
front ends authenticate requests and call the archive for a principal.

Roles (issue 8; close to what dcm4chee-arc's roles and Orthanc's
authorization plugin offer):

============  ==============================================================
admin         everything: every study, store, share, users and tokens
radiologist   every study: read, store (reports later), share
hospital      a satellite hospital: reads the studies of its institutions or
              patient-ID issuers, and those shared with it; never stores
modality      stores only: sees nothing
============  ==============================================================

Passwords are hashed with argon2id (memory-hard);
tokens and session identifiers are 256 random bits, stored as SHA-256 digests
(a fast hash suffices for high-entropy secrets), so a copy of the index
yields no credential.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from pacs.types import Scope, fold


class Role(enum.Enum):
    ADMIN = "admin"
    RADIOLOGIST = "radiologist"
    HOSPITAL = "hospital"
    MODALITY = "modality"


class Permission(enum.Enum):
    READ = "read"
    """Search and retrieve (within the caller's scope)."""
    STORE = "store"
    SHARE = "share"
    """Share a study with a hospital, make or revoke a share link."""
    MANAGE = "manage"
    """Users, tokens and the audit trail."""
    DELETE = "delete"
    """Remove stored studies, series and instances (admins only)."""


ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.ADMIN: frozenset(Permission),
    Role.RADIOLOGIST: frozenset((Permission.READ, Permission.STORE, Permission.SHARE)),
    Role.HOSPITAL: frozenset((Permission.READ,)),
    Role.MODALITY: frozenset((Permission.STORE,)),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller of the HTTP side (a user, or a share link's bearer)."""

    name: str
    role: Role
    scope: Scope
    via: str = "password"
    """``password`` (session), ``token``, ``share-link`` or ``anonymous`` (auth off)."""
    session_id: str = ""
    csrf_token: str = ""

    def may(self, permission: Permission) -> bool:
        if self.via == "share-link":
            return permission is Permission.READ
        return permission in ROLE_PERMISSIONS[self.role]


ANONYMOUS = Principal("", Role.ADMIN, Scope.all(), via="anonymous")
"""Who calls when authentication is off (no users: the embedded, loopback-only default)."""


def user_scope(role: Role, institutions: Iterable[str], issuers: Iterable[str]) -> Scope:
    """A user's scope before shares: hospitals see their own institutions' studies."""
    if role in (Role.ADMIN, Role.RADIOLOGIST):
        return Scope.all()
    if role is Role.MODALITY:
        return Scope.nothing()
    return Scope(
        institutions=frozenset(fold(i) for i in institutions if i.strip()),
        issuers=frozenset(fold(i) for i in issuers if i.strip()),
    )


# -- passwords -------------------------------------------------------------------

# argon2id at OWASP's recommended minimum (19 MiB, 2 passes, 1 lane): ~40 ms a
# check here. scrypt from the standard library at OWASP's equivalent cost
# (N=2^17, r=8) took ~0.6-1.5 s on the same 2 cores.
_HASHER = PasswordHasher(time_cost=2, memory_cost=19456, parallelism=1)
MIN_PASSWORD_LENGTH = 10


def hash_password(password: str) -> str:
    """An argon2id hash in PHC string form (parameters and salt included), for the index."""
    return str(_HASHER.hash(password))


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of ``password`` against ``hash_password``'s output."""
    try:
        return bool(_HASHER.verify(stored, password))
    except (VerificationError, InvalidHashError):
        return False


def password_problem(password: str) -> str | None:
    """Why a new password is refused, or ``None``."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"a password needs at least {MIN_PASSWORD_LENGTH} characters"
    if password.strip() != password or not password.isprintable():
        return "a password may not start or end with spaces or hold control characters"
    return None


# -- tokens, sessions and share links -------------------------------------------------


@dataclass(frozen=True, slots=True)
class Secret:
    """A credential as handed out once: ``text`` goes to the holder, only
    ``identifier`` and ``digest`` are kept."""

    identifier: str
    digest: str
    text: str


def new_secret(prefix: str) -> Secret:
    """``<prefix>_<identifier>.<secret>``: the identifier finds the record, the secret proves it."""
    identifier = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return Secret(identifier, digest(secret), f"{prefix}_{identifier}.{secret}")


def parse_secret(text: str, prefix: str) -> tuple[str, str] | None:
    """(identifier, digest of the secret) of a credential, or ``None`` when malformed."""
    head, _, secret = text.strip().partition(".")
    kind, _, identifier = head.partition("_")
    if kind != prefix or len(identifier) != 16 or not secret or len(secret) > 100:
        return None
    return identifier, digest(secret)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_digest(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


TOKEN_PREFIX = "pacs"
SESSION_PREFIX = "sess"
LINK_PREFIX = "share"


def parse_duration(text: str) -> float:
    """Seconds of ``30d``, ``12h``, ``90m`` or ``45s`` (a plain number is days)."""
    value = text.strip().lower()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
    unit = units.get(value[-1:])
    number = value[:-1] if unit else value
    try:
        seconds = float(number) * (unit or 86400)
    except ValueError:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h or 90m") from None
    if not 0 < seconds <= 10 * 365 * 86400:
        raise ValueError(f"{text!r}: a duration must be positive and at most 10 years")
    return seconds


# -- login throttling --------------------------------------------------------------


@dataclass
class LoginThrottle:
    """Failed logins counted per user name and per address in a sliding window.

    After ``limit`` failures in ``window`` seconds for a user, or
    ``address_limit`` from one address (a hospital's users share one behind
    its NAT), further attempts are refused (without checking the password)
    until the oldest failure leaves the window. Per process: with several
    server processes an attacker gets ``limit`` tries per process, still far
    too few for a password search, and no shared state is needed.
    """

    limit: int = 5
    address_limit: int = 20
    window: float = 300.0
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, user: str, address: str, now: float | None = None) -> float:
        """Seconds until ``user`` from ``address`` may try again (0: now)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            waits = [self._wait(key, now) for key in self._keys(user, address)]
        return max(waits, default=0.0)

    def failed(self, user: str, address: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in self._keys(user, address):
                self._failures.setdefault(key, deque()).append(now)
            if len(self._failures) > 10_000:  # forget idle keys, bounded memory
                for key in [k for k, times in self._failures.items() if not times]:
                    del self._failures[key]

    def succeeded(self, user: str, address: str) -> None:
        with self._lock:
            self._failures.pop(f"user:{fold(user)}", None)

    def _wait(self, key: str, now: float) -> float:
        times = self._failures.get(key)
        if not times:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < (self.address_limit if key.startswith("address:") else self.limit):
            return 0.0
        return times[0] + self.window - now

    @staticmethod
    def _keys(user: str, address: str) -> list[str]:
        keys = [f"user:{fold(user)}"] if user else []
        return [*keys, f"address:{address}"] if address else keys


def describe(value: Any) -> str:
    """A short, log-safe text for audit details (never a credential)."""
    text = str(value)
    return text if len(text) <= 200 else text[:197] + "..."
