"""``AccessStore`` over the SQL backends (the tables of migration 3 in ``pacs.index.sql``).

One mixin for SQLite and PostgreSQL: a backend gives it ``_access_rows`` (a
read) and ``_access_write`` (statements in one transaction) and its
placeholder; the SQL here is written with ``?`` and translated.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pacs.index.access import AuditQuery, CredentialRecord, ShareRecord, UserRecord
from pacs.types import AuditEvent

_SEPARATOR = "\\"
_USER_COLUMNS = "username, role, password_hash, institutions, issuers, disabled, created_at"
_CREDENTIAL_COLUMNS = (
    "identifier, kind, digest, username, created_at, expires_at, study_uid, label,"
    " csrf_token, revoked_at"
)
_AUDIT_COLUMNS = (
    "time, action, outcome, actor, actor_kind, address, patient_id, study_uid, detail, count"
)


class SqlAccessStore:
    _access_param = "?"

    def _access_rows(self, statement: str, params: Sequence[Any]) -> list[Mapping[str, Any]]:
        raise NotImplementedError

    def _access_write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[int]:
        """Run ``statements`` in one transaction; return each one's row count."""
        raise NotImplementedError

    def _access_sql(self, statement: str) -> str:
        return statement if self._access_param == "?" else statement.replace("?", "%s")

    def _select_access(self, statement: str, *params: Any) -> list[Mapping[str, Any]]:
        return self._access_rows(self._access_sql(statement), params)

    def _change_access(self, *statements: tuple[str, Sequence[Any]]) -> list[int]:
        return self._access_write([(self._access_sql(s), p) for s, p in statements])

    # -- users ------------------------------------------------------------------

    def put_user(self, user: UserRecord) -> None:
        values = (
            user.username,
            user.role,
            user.password_hash,
            _SEPARATOR.join(user.institutions),
            _SEPARATOR.join(user.issuers),
            int(user.disabled),
            user.created_at,
        )
        self._change_access(
            ("DELETE FROM users WHERE username = ?", (user.username,)),
            (f"INSERT INTO users ({_USER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", values),
        )

    def user(self, username: str) -> UserRecord | None:
        rows = self._select_access(
            f"SELECT {_USER_COLUMNS} FROM users WHERE username = ?", username
        )
        return _user(rows[0]) if rows else None

    def users(self) -> list[UserRecord]:
        rows = self._select_access(f"SELECT {_USER_COLUMNS} FROM users ORDER BY username")
        return [_user(r) for r in rows]

    def has_users(self) -> bool:
        return bool(self._select_access("SELECT 1 AS one FROM users LIMIT 1"))

    # -- credentials --------------------------------------------------------------

    def put_credential(self, credential: CredentialRecord) -> None:
        c = credential
        self._change_access(
            (
                f"INSERT INTO credentials ({_CREDENTIAL_COLUMNS}) VALUES"
                " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    c.identifier,
                    c.kind,
                    c.digest,
                    c.username,
                    c.created_at,
                    c.expires_at,
                    c.study_uid,
                    c.label,
                    c.csrf_token,
                    c.revoked_at,
                ),
            )
        )

    def credential(self, identifier: str) -> CredentialRecord | None:
        rows = self._select_access(
            f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials WHERE identifier = ?", identifier
        )
        return CredentialRecord(**rows[0]) if rows else None

    def credentials(self, username: str = "", kind: str = "") -> list[CredentialRecord]:
        where, params = [], []
        if username:
            where.append("username = ?")
            params.append(username)
        if kind:
            where.append("kind = ?")
            params.append(kind)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = self._select_access(
            f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials{clause} ORDER BY created_at", *params
        )
        return [CredentialRecord(**r) for r in rows]

    def revoke_credential(self, identifier: str, at: str) -> bool:
        (changed,) = self._change_access(
            (
                "UPDATE credentials SET revoked_at = ? WHERE identifier = ? AND revoked_at = ''",
                (at, identifier),
            )
        )
        return changed > 0

    # -- shares ------------------------------------------------------------------

    def put_share(self, share: ShareRecord) -> None:
        if self.shares(share.username, share.study_uid):
            return
        self._change_access(
            (
                "INSERT INTO shares (study_uid, username, granted_by, created_at, revoked_at)"
                " VALUES (?, ?, ?, ?, '')",
                (share.study_uid, share.username, share.granted_by, share.created_at),
            )
        )

    def revoke_share(self, study_uid: str, username: str, at: str) -> bool:
        (changed,) = self._change_access(
            (
                "UPDATE shares SET revoked_at = ?"
                " WHERE study_uid = ? AND username = ? AND revoked_at = ''",
                (at, study_uid, username),
            )
        )
        return changed > 0

    def shares(self, username: str = "", study_uid: str = "") -> list[ShareRecord]:
        where, params = ["revoked_at = ''"], []
        if username:
            where.append("username = ?")
            params.append(username)
        if study_uid:
            where.append("study_uid = ?")
            params.append(study_uid)
        rows = self._select_access(
            "SELECT study_uid, username, granted_by, created_at, revoked_at FROM shares"
            f" WHERE {' AND '.join(where)} ORDER BY pk",
            *params,
        )
        return [ShareRecord(**r) for r in rows]

    # -- audit ------------------------------------------------------------------

    def append_audit(self, events: Sequence[AuditEvent]) -> None:
        if not events:
            return
        # Patient IDs of the studies named, in one look-up, for events that lack them.
        wanted = sorted({e.study_uid for e in events if e.study_uid and not e.patient_id})
        patients: dict[str, str] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            for row in self._select_access(
                "SELECT st.study_instance_uid AS uid, p.patient_id AS patient_id"
                " FROM studies st JOIN patients p ON p.pk = st.patient_pk"
                f" WHERE st.study_instance_uid IN ({marks})",
                *chunk,
            ):
                patients[str(row["uid"])] = str(row["patient_id"] or "")
        statement = f"INSERT INTO audit ({_AUDIT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        self._change_access(
            *[
                (
                    statement,
                    (
                        e.time,
                        e.action,
                        e.outcome,
                        e.actor,
                        e.actor_kind,
                        e.address,
                        e.patient_id or patients.get(e.study_uid, ""),
                        e.study_uid,
                        e.detail[:500],
                        e.count,
                    ),
                )
                for e in events
            ]
        )

    def audit(self, query: AuditQuery) -> Iterator[AuditEvent]:
        where: list[str] = []
        params: list[Any] = []
        for column, value, operator in (
            ("time", query.since, ">="),
            ("time", query.until, "<"),
            ("actor", query.actor, "="),
            ("patient_id", query.patient_id, "="),
            ("study_uid", query.study_uid, "="),
            ("action", query.action, "="),
        ):
            if value:
                where.append(f"{column} {operator} ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        params.append(query.limit)
        rows = self._select_access(
            f"SELECT {_AUDIT_COLUMNS} FROM audit{clause} ORDER BY pk LIMIT ?", *params
        )
        for row in rows:
            yield AuditEvent(
                action=str(row["action"]),
                outcome=str(row["outcome"]),
                actor=str(row["actor"]),
                actor_kind=str(row["actor_kind"]),
                address=str(row["address"]),
                patient_id=str(row["patient_id"]),
                study_uid=str(row["study_uid"]),
                detail=str(row["detail"]),
                count=int(row["count"]),
                time=str(row["time"]),
            )

    def study_access(self, study_uid: str) -> tuple[str, str, str] | None:
        rows = self._select_access(
            "SELECT st.institution_name AS institution, p.issuer_of_patient_id AS issuer,"
            " p.patient_id AS patient_id FROM studies st JOIN patients p ON p.pk = st.patient_pk"
            " WHERE st.study_instance_uid = ?",
            study_uid,
        )
        if not rows:
            return None
        row = rows[0]
        return (
            str(row["institution"] or ""),
            str(row["issuer"] or ""),
            str(row["patient_id"] or ""),
        )


def _user(row: Mapping[str, Any]) -> UserRecord:
    def values(text: Any) -> tuple[str, ...]:
        return tuple(v for v in str(text or "").split(_SEPARATOR) if v)

    return UserRecord(
        username=str(row["username"]),
        role=str(row["role"]),
        password_hash=str(row["password_hash"]),
        institutions=values(row["institutions"]),
        issuers=values(row["issuers"]),
        disabled=bool(row["disabled"]),
        created_at=str(row["created_at"]),
    )
