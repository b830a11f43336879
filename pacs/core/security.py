"""Users, credentials and shares, over the access store: the one place that says who a caller is.

Front ends hand it what a request carries (a bearer token, a session cookie,
a share link, a user name and password) and get a ``Principal``, or an
``AuthenticationError`` with a reason that is safe to show (it never says
whether a user exists). Every outcome is recorded in the audit trail.

::

    PacsError
     └── AuthenticationError      no valid credential (HTTP 401)
          └── ThrottledError      too many failed logins for now (HTTP 429)
     └── PermissionDeniedError    valid, but not allowed (HTTP 403)
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from pacs.core.access import (
    LINK_PREFIX,
    SESSION_PREFIX,
    TOKEN_PREFIX,
    LoginThrottle,
    Permission,
    Principal,
    Role,
    hash_password,
    new_secret,
    parse_secret,
    password_problem,
    same_digest,
    user_scope,
    verify_password,
)
from pacs.core.audit import AuditTrail, now_iso
from pacs.errors import ConfigError, NotFoundError, PacsError
from pacs.index.access import AccessStore, CredentialRecord, ShareRecord, UserRecord
from pacs.types import AuditEvent, Scope

SESSION_SECONDS = 12 * 3600
"""A login lasts a working day (a reading shift), then the radiologist logs in again."""
_USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-@")


class AuthenticationError(PacsError):
    """No valid credential; the message is safe to show."""


class ThrottledError(AuthenticationError):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermissionDeniedError(PacsError):
    """Authenticated, but the role does not allow it."""


class Security:
    """Thread-safe (the store is, the throttle locks)."""

    def __init__(
        self, store: AccessStore, audit: AuditTrail, throttle: LoginThrottle | None = None
    ) -> None:
        self.store = store
        self.audit = audit
        self.throttle = throttle or LoginThrottle()

    @property
    def enabled(self) -> bool:
        """Authentication is on as soon as one user exists."""
        return self.store.has_users()

    # -- users (pacs user ...) --------------------------------------------------------

    def add_user(
        self,
        username: str,
        password: str,
        role: Role,
        *,
        institutions: Iterable[str] = (),
        issuers: Iterable[str] = (),
        by: str = "pacs user add",
    ) -> UserRecord:
        name = check_username(username)
        if self.store.user(name) is not None:
            raise ConfigError(f"user {name} already exists (use passwd or disable)")
        problem = password_problem(password)
        if problem:
            raise ConfigError(problem)
        institutions, issuers = tuple(institutions), tuple(issuers)
        if role is Role.HOSPITAL and not (institutions or issuers):
            raise ConfigError(
                "a hospital account needs --institution or --issuer (or shares) to see anything;"
                " give at least one"
            )
        user = UserRecord(
            name, role.value, hash_password(password), institutions, issuers, False, now_iso()
        )
        self.store.put_user(user)
        self._audit("user", "success", by, "system", detail=f"added {name} ({role.value})")
        return user

    def set_password(self, username: str, password: str, by: str = "pacs user passwd") -> None:
        user = self._existing(username)
        problem = password_problem(password)
        if problem:
            raise ConfigError(problem)
        self.store.put_user(replace(user, password_hash=hash_password(password)))
        self._audit("user", "success", by, "system", detail=f"password of {user.username} changed")

    def set_disabled(self, username: str, disabled: bool, by: str = "pacs user") -> None:
        user = self._existing(username)
        self.store.put_user(replace(user, disabled=disabled))
        if disabled:  # a disabled user's sessions and tokens stop at once
            for credential in self.store.credentials(user.username):
                if not credential.revoked_at:
                    self.store.revoke_credential(credential.identifier, now_iso())
        what = "disabled" if disabled else "enabled"
        self._audit("user", "success", by, "system", detail=f"{user.username} {what}")

    def _existing(self, username: str) -> UserRecord:
        user = self.store.user(username.strip().lower())
        if user is None:
            raise NotFoundError(f"no user {username}")
        return user

    # -- tokens -----------------------------------------------------------------------

    def create_token(
        self, username: str, seconds: float, label: str = "", by: str = "pacs token create"
    ) -> tuple[str, CredentialRecord]:
        """A bearer token for an API client; the text is shown once and never kept."""
        user = self._existing(username)
        if user.disabled:
            raise ConfigError(f"user {user.username} is disabled")
        secret = new_secret(TOKEN_PREFIX)
        record = CredentialRecord(
            secret.identifier,
            "token",
            secret.digest,
            user.username,
            now_iso(),
            _later(seconds),
            label=label,
        )
        self.store.put_credential(record)
        self._audit(
            "token",
            "success",
            by,
            "system",
            detail=f"token {secret.identifier} for {user.username} until {record.expires_at}",
        )
        return secret.text, record

    def revoke(self, identifier: str, by: str) -> bool:
        """Revoke a token, session or share link by its identifier."""
        done = self.store.revoke_credential(identifier, now_iso())
        credential = self.store.credential(identifier)
        action = "unshare" if credential and credential.kind == "link" else "token"
        self._audit(
            action,
            "success" if done else "failure",
            by,
            "user",
            study_uid=credential.study_uid if credential else "",
            detail=f"revoke {identifier}",
        )
        return done

    # -- sessions (the viewer) -----------------------------------------------------------

    def login(self, username: str, password: str, address: str) -> tuple[Principal, str]:
        """A new session for the viewer: (principal, cookie value)."""
        name = username.strip().lower()
        wait = self.throttle.wait(name, address)
        if wait > 0:
            self._audit("login", "denied", name, "user", address, detail="too many failed logins")
            raise ThrottledError(
                f"too many failed logins: try again in {int(wait) + 1} s", retry_after=wait
            )
        user = self.store.user(name)
        # Check a password even for an unknown user, so both take the same time.
        valid = verify_password(password, user.password_hash if user else _dummy_hash())
        if user is None or not valid or user.disabled:
            self.throttle.failed(name, address)
            reason = (
                "disabled" if user and user.disabled and valid else "wrong user name or password"
            )
            self._audit("login", "failure", name, "user", address, detail=reason)
            raise AuthenticationError("wrong user name or password, or the account is disabled")
        self.throttle.succeeded(name, address)
        secret = new_secret(SESSION_PREFIX)
        record = CredentialRecord(
            secret.identifier,
            "session",
            secret.digest,
            user.username,
            now_iso(),
            _later(SESSION_SECONDS),
            csrf_token=secrets.token_urlsafe(24),
        )
        self.store.put_credential(record)
        self._audit("login", "success", user.username, "user", address)
        return self._principal(user, record, "password"), secret.text

    def logout(self, principal: Principal, address: str) -> None:
        if principal.session_id:
            self.store.revoke_credential(principal.session_id, now_iso())
        self._audit("logout", "success", principal.name, "user", address)

    # -- share links and shares ----------------------------------------------------------

    def share(self, principal: Principal, study_uid: str, username: str, address: str) -> None:
        """Let a hospital account see one study (teleconsultation)."""
        self._require(principal, Permission.SHARE, address, "share", study_uid)
        hospital = self._existing(username)
        if hospital.role != Role.HOSPITAL.value:
            raise ConfigError(f"{hospital.username} is not a hospital account")
        if self.store.study_access(study_uid) is None:
            raise NotFoundError(f"no study {study_uid}")
        self.store.put_share(ShareRecord(study_uid, hospital.username, principal.name, now_iso()))
        self._audit(
            "share",
            "success",
            principal.name,
            _kind(principal),
            address,
            study_uid=study_uid,
            detail=f"shared with {hospital.username}",
        )

    def unshare(self, principal: Principal, study_uid: str, username: str, address: str) -> bool:
        self._require(principal, Permission.SHARE, address, "unshare", study_uid)
        done = self.store.revoke_share(study_uid, username.strip().lower(), now_iso())
        self._audit(
            "unshare",
            "success" if done else "failure",
            principal.name,
            _kind(principal),
            address,
            study_uid=study_uid,
            detail=f"unshared from {username}",
        )
        return done

    def create_link(
        self, principal: Principal, study_uid: str, seconds: float, address: str
    ) -> tuple[str, CredentialRecord]:
        """An expiring read-only link to one study; the text is shown once."""
        self._require(principal, Permission.SHARE, address, "share", study_uid)
        if self.store.study_access(study_uid) is None:
            raise NotFoundError(f"no study {study_uid}")
        secret = new_secret(LINK_PREFIX)
        record = CredentialRecord(
            secret.identifier,
            "link",
            secret.digest,
            principal.name,
            now_iso(),
            _later(seconds),
            study_uid=study_uid,
        )
        self.store.put_credential(record)
        self._audit(
            "share",
            "success",
            principal.name,
            _kind(principal),
            address,
            study_uid=study_uid,
            detail=f"link {secret.identifier} until {record.expires_at}",
        )
        return secret.text, record

    # -- who is calling ------------------------------------------------------------------

    def authenticate(self, credential: str, address: str, *, cookie: bool = False) -> Principal:
        """The principal a bearer token, share link or session cookie stands for."""
        text = credential.strip()
        kind = text.partition("_")[0]
        expected = {TOKEN_PREFIX: "token", LINK_PREFIX: "link", SESSION_PREFIX: "session"}
        if kind not in expected or (cookie and kind == TOKEN_PREFIX):
            raise AuthenticationError("not a credential of this archive")
        parsed = parse_secret(text, kind)
        record = self.store.credential(parsed[0]) if parsed else None
        if record is None or parsed is None or not same_digest(parsed[1], record.digest):
            raise AuthenticationError("unknown or damaged credential")
        if record.kind != expected[kind]:
            raise AuthenticationError("unknown or damaged credential")
        if record.revoked_at:
            raise AuthenticationError(f"this {_noun(record)} was revoked")
        if record.expires_at <= now_iso():
            raise AuthenticationError(f"this {_noun(record)} has expired")
        if record.kind == "link":
            scope = Scope(study_uids=frozenset((record.study_uid,)))
            return Principal(
                f"link:{record.identifier}",
                Role.HOSPITAL,
                scope,
                via="share-link",
                session_id=record.identifier,
            )
        user = self.store.user(record.username)
        if user is None or user.disabled:
            raise AuthenticationError("the account of this credential is disabled")
        return self._principal(user, record, "password" if record.kind == "session" else "token")

    def _principal(self, user: UserRecord, record: CredentialRecord, via: str) -> Principal:
        role = Role(user.role)
        scope = user_scope(role, user.institutions, user.issuers)
        if role is Role.HOSPITAL:
            scope = scope.with_studies(s.study_uid for s in self.store.shares(user.username))
        return Principal(
            user.username,
            role,
            scope,
            via=via,
            session_id=record.identifier if record.kind == "session" else "",
            csrf_token=record.csrf_token,
        )

    def _require(
        self,
        principal: Principal,
        permission: Permission,
        address: str,
        action: str,
        study_uid: str = "",
    ) -> None:
        if not principal.may(permission):
            self._audit(
                action,
                "denied",
                principal.name,
                _kind(principal),
                address,
                study_uid=study_uid,
                detail=f"{principal.role.value} may not {permission.value}",
            )
            raise PermissionDeniedError(
                f"{principal.role.value} accounts may not {permission.value}"
            )

    def _audit(
        self,
        action: str,
        outcome: str,
        actor: str,
        kind: str,
        address: str = "",
        *,
        study_uid: str = "",
        detail: str = "",
    ) -> None:
        self.audit.record(AuditEvent(action, outcome, actor, kind, address, "", study_uid, detail))


def check_username(username: str) -> str:
    name = username.strip().lower()
    if not 1 <= len(name) <= 64 or not set(name) <= _USERNAME_CHARS:
        raise ConfigError(f"user name {username!r}: 1-64 of a-z, 0-9, '.', '_', '-' and '@'")
    return name


def _later(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _noun(record: CredentialRecord) -> str:
    return {"token": "token", "session": "session", "link": "share link"}[record.kind]


def _kind(principal: Principal) -> str:
    return {"share-link": "share-link", "anonymous": "anonymous"}.get(principal.via, "user")


@functools.cache
def _dummy_hash() -> str:
    """What a login of an unknown user is checked against (the same cost as a real one)."""
    return hash_password(secrets.token_urlsafe(16))
