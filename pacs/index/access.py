"""The access store protocol: users, credentials, shares and the audit trail.

Kept in the same database as the index (SQLite or PostgreSQL), so that
several server processes see one set of users and one audit trail, and a
revocation is seen by all of them at the next request.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from pacs.types import AuditEvent


@dataclass(frozen=True, slots=True)
class UserRecord:
    username: str
    role: str
    password_hash: str
    institutions: tuple[str, ...] = ()
    """For a hospital account: the Institution Names whose studies it sees."""
    issuers: tuple[str, ...] = ()
    """For a hospital account: the Issuers of Patient ID whose patients' studies it sees."""
    disabled: bool = False
    created_at: str = ""


@dataclass(frozen=True, slots=True)
class CredentialRecord:
    """A token, a login session or a share link; only the secret's digest is kept."""

    identifier: str
    kind: str
    """``token``, ``session`` or ``link``."""
    digest: str
    username: str
    """The holder (for a link: who made it)."""
    created_at: str
    expires_at: str
    """UTC ISO 8601; every credential expires."""
    study_uid: str = ""
    """A link's one study."""
    label: str = ""
    csrf_token: str = ""
    """A session's anti-CSRF token, sent back by the viewer on state-changing requests."""
    revoked_at: str = ""


@dataclass(frozen=True, slots=True)
class ShareRecord:
    study_uid: str
    username: str
    """The hospital account the study is shared with."""
    granted_by: str
    created_at: str
    revoked_at: str = ""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    since: str = ""
    until: str = ""
    actor: str = ""
    patient_id: str = ""
    study_uid: str = ""
    action: str = ""
    limit: int = 100_000


class AccessStore(Protocol):
    """Thread-safe; every write is one transaction."""

    def put_user(self, user: UserRecord) -> None:
        """Insert the user, or replace the record of the same name."""
        ...

    def user(self, username: str) -> UserRecord | None: ...

    def users(self) -> list[UserRecord]: ...

    def has_users(self) -> bool:
        """Whether any user (enabled or not) exists: authentication is then on."""
        ...

    def put_credential(self, credential: CredentialRecord) -> None: ...

    def credential(self, identifier: str) -> CredentialRecord | None: ...

    def credentials(self, username: str = "", kind: str = "") -> list[CredentialRecord]: ...

    def revoke_credential(self, identifier: str, at: str) -> bool:
        """Mark it revoked (kept for the record); ``False`` when unknown or already revoked."""
        ...

    def put_share(self, share: ShareRecord) -> None:
        """Record an active share (an active one of the same study and user stays as it is)."""
        ...

    def revoke_share(self, study_uid: str, username: str, at: str) -> bool: ...

    def shares(self, username: str = "", study_uid: str = "") -> list[ShareRecord]:
        """Active shares, optionally of one user or one study."""
        ...

    def append_audit(self, events: Sequence[AuditEvent]) -> None:
        """Insert events; the store never updates or deletes them."""
        ...

    def audit(self, query: AuditQuery) -> Iterator[AuditEvent]:
        """Events matching ``query``, oldest first."""
        ...

    def study_access(self, study_uid: str) -> tuple[str, str, str] | None:
        """(Institution Name, Issuer of Patient ID, Patient ID) of a stored study, or ``None``."""
        ...
