"""What the SQL backends share: the tables, the migrations and the query translation.

Both ``SqliteIndex`` and ``PostgresIndex`` derive their tables from
``pacs.index.schema`` through ``migrations`` and turn a ``Query`` into SQL
through ``select``; a ``Dialect`` holds the few places where the two
databases differ (placeholders, types, pattern matching).

Migrations are numbered. Each backend records the number it has reached (SQLite
in ``PRAGMA user_version``, PostgreSQL in a ``schema_migrations`` table) and
applies, at start-up and in one transaction, those it has not; an index
newer than this server is refused rather than guessed at.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pacs.index.query import AnyOf, Condition, Match, Query, Range, SingleValue, UidList, Wildcard
from pacs.index.schema import (
    ATTRIBUTES,
    Kind,
    Level,
    attributes_at,
    fold_column,
    norm_column,
    normalise_name,
)
from pacs.types import Scope, fold

TABLES = {
    Level.PATIENT: "patients",
    Level.STUDY: "studies",
    Level.SERIES: "series",
    Level.IMAGE: "instances",
}
PARENT_COLUMN = {Level.STUDY: "patient_pk", Level.SERIES: "study_pk", Level.IMAGE: "series_pk"}
COUNTERS = {
    Level.PATIENT: (
        "number_of_patient_related_studies",
        "number_of_patient_related_series",
        "number_of_patient_related_instances",
    ),
    Level.STUDY: ("number_of_study_related_series", "number_of_study_related_instances"),
    Level.SERIES: ("number_of_series_related_instances",),
}
# (name, kind, NOT NULL); kinds: "text", "int", "bigint".
EXTRA_COLUMNS: dict[Level, tuple[tuple[str, str, bool], ...]] = {
    Level.STUDY: (
        ("modalities_in_study", "text", False),
        ("sop_classes_in_study", "text", False),
        ("created_at", "text", False),
    ),
    Level.SERIES: (("created_at", "text", False),),
    Level.IMAGE: (
        ("transfer_syntax_uid", "text", True),
        ("blob_key", "text", True),
        ("size", "bigint", True),
        ("content_hash", "text", True),
        ("pixel_data_offset", "bigint", False),
        ("pixel_data_length", "bigint", False),
        ("source_ae_title", "text", False),
        ("stored_at", "text", True),
    ),
}
# Columns searched often enough to deserve an index (study list, C-FIND by ID or date).
SEARCH_INDEXES = {
    Level.PATIENT: ("patient_name_norm", "patient_birth_date"),
    Level.STUDY: ("study_date", "accession_number", "study_id", "patient_pk"),
    Level.SERIES: ("modality", "study_pk"),
    Level.IMAGE: ("series_pk", "sop_class_uid"),
}
UNIQUE = {
    Level.PATIENT: ("patient_id", "issuer_of_patient_id"),
    Level.STUDY: ("study_instance_uid",),
    Level.SERIES: ("series_instance_uid",),
    Level.IMAGE: ("sop_instance_uid",),
}
INTEGER_COLUMNS = frozenset(a.column for a in ATTRIBUTES if a.kind is Kind.INTEGER) | frozenset(
    c for counters in COUNTERS.values() for c in counters
)

Clause = tuple[str, list[Any]]


@dataclass(frozen=True)
class Dialect:
    name: str
    param: str
    """The placeholder of one parameter."""
    text: str
    integer: str
    bigint: str
    binary: str
    primary_key: str
    unlimited: Any
    """The LIMIT parameter that means no limit."""
    order_prefix: str
    """Put before the ordering column (SQLite: ``+`` so it keeps to the search index)."""
    wildcard: Callable[[str, str], Clause]
    any_value_matches: Callable[[str, str], Clause]
    """C.2.2.2.4 on a multi-valued column: some one value matches the pattern."""
    contains_value: str
    """SQL with ``{haystack}`` and ``{needle}``: true when ``needle`` occurs in ``haystack``."""

    def column_type(self, kind: str) -> str:
        return {"text": self.text, "int": self.integer, "bigint": self.bigint}[kind]


@functools.cache  # every ingest asks, and the schema is fixed
def columns(level: Level) -> tuple[str, ...]:
    names = []
    for attribute in attributes_at(level):
        names.append(attribute.column)
        if attribute.kind is Kind.PERSON_NAME:
            names.append(norm_column(attribute))
        if attribute.folded:
            names.append(fold_column(attribute))  # added by migration 3
    return tuple(names)


def derived_values(values: dict[str, Any]) -> None:
    """Add the folded copies (``*_norm`` of person names, ``*_fold``) an ingest stores."""
    for column, norm, folded in _DERIVED:
        value = values.get(column)
        if not value:
            continue
        if norm is not None:
            values[norm] = normalise_name(str(value))
        if folded is not None:
            values[folded] = fold(str(value))


# (column, its *_norm column or None, its *_fold column or None) of each
# attribute with a derived copy.
_DERIVED = tuple(
    (
        attribute.column,
        norm_column(attribute) if attribute.kind is Kind.PERSON_NAME else None,
        fold_column(attribute) if attribute.folded else None,
    )
    for attribute in ATTRIBUTES
    if attribute.kind is Kind.PERSON_NAME or attribute.folded
)


def create_tables(dialect: Dialect) -> list[str]:
    statements = []
    for level, table in TABLES.items():
        definitions = [f"pk {dialect.primary_key}"]
        if level in PARENT_COLUMN:
            parent = TABLES[list(TABLES)[list(TABLES).index(level) - 1]]
            definitions.append(
                f"{PARENT_COLUMN[level]} {dialect.bigint} NOT NULL REFERENCES {parent}(pk)"
            )
        for attribute in attributes_at(level):
            sql_type = dialect.integer if attribute.kind is Kind.INTEGER else dialect.text
            # Patient identity columns hold '' rather than NULL so UNIQUE applies.
            not_null = (
                " NOT NULL DEFAULT ''"
                if attribute.column in ("patient_id", "issuer_of_patient_id")
                else ""
            )
            if attribute.column.endswith("_uid"):  # an entity's UIDs are required
                not_null = " NOT NULL"
            definitions.append(f"{attribute.column} {sql_type}{not_null}")
            if attribute.kind is Kind.PERSON_NAME:
                definitions.append(f"{norm_column(attribute)} {dialect.text}")
        definitions += [
            f"{counter} {dialect.integer} NOT NULL DEFAULT 0" for counter in COUNTERS.get(level, ())
        ]
        definitions += [
            f"{name} {dialect.column_type(kind)}{' NOT NULL' if required else ''}"
            for name, kind, required in EXTRA_COLUMNS.get(level, ())
        ]
        definitions.append(f"UNIQUE ({', '.join(UNIQUE[level])})")
        statements.append(f"CREATE TABLE {table} ({', '.join(definitions)})")
        for column in SEARCH_INDEXES[level]:
            statements.append(f"CREATE INDEX {table}_{column} ON {table} ({column})")
    return statements


Statement = str | Callable[[Any], None]
"""SQL, or a function given the open connection (for what SQL alone cannot do)."""


def migrations(dialect: Dialect) -> list[tuple[int, str, list[Statement]]]:
    """(version, what it does, statements), oldest first. Never edit a released one:
    add the next."""
    return [
        (1, "patients, studies, series and instances", list(create_tables(dialect))),
        (
            2,
            "precomputed DICOM JSON per instance",
            # Kept apart so that scans of the instances table stay small.
            [
                f"""CREATE TABLE instance_metadata (
                      instance_pk {dialect.bigint} PRIMARY KEY
                        REFERENCES instances(pk) ON DELETE CASCADE,
                      json {dialect.binary} NOT NULL)"""
            ],
        ),
        (3, "users, credentials, shares, the audit trail; folded institution", _access(dialect)),
    ]


def _access(dialect: Dialect) -> list[Statement]:
    """Migration 3: what ``AccessStore`` keeps, and the columns access scopes match on."""
    text, pk = dialect.text, dialect.primary_key
    statements: list[Statement] = []
    for attribute in ATTRIBUTES:
        if attribute.folded:
            table = TABLES[attribute.level]
            column = fold_column(attribute)
            statements += [
                f"ALTER TABLE {table} ADD COLUMN {column} {text}",
                f"CREATE INDEX {table}_{column} ON {table} ({column})",
            ]
    statements.append(lambda db: _fill_folded(db, dialect))
    statements += [
        f"""CREATE TABLE users (
              username {text} PRIMARY KEY, role {text} NOT NULL,
              password_hash {text} NOT NULL,
              institutions {text} NOT NULL DEFAULT '', issuers {text} NOT NULL DEFAULT '',
              disabled {dialect.integer} NOT NULL DEFAULT 0, created_at {text} NOT NULL)""",
        f"""CREATE TABLE credentials (
              identifier {text} PRIMARY KEY, kind {text} NOT NULL, digest {text} NOT NULL,
              username {text} NOT NULL, created_at {text} NOT NULL, expires_at {text} NOT NULL,
              study_uid {text} NOT NULL DEFAULT '', label {text} NOT NULL DEFAULT '',
              csrf_token {text} NOT NULL DEFAULT '', revoked_at {text} NOT NULL DEFAULT '')""",
        "CREATE INDEX credentials_username ON credentials (username)",
        f"""CREATE TABLE shares (
              pk {pk}, study_uid {text} NOT NULL, username {text} NOT NULL,
              granted_by {text} NOT NULL, created_at {text} NOT NULL,
              revoked_at {text} NOT NULL DEFAULT '')""",
        "CREATE INDEX shares_username ON shares (username)",
        "CREATE INDEX shares_study_uid ON shares (study_uid)",
        f"""CREATE TABLE audit (
              pk {pk}, time {text} NOT NULL, action {text} NOT NULL, outcome {text} NOT NULL,
              actor {text} NOT NULL, actor_kind {text} NOT NULL, address {text} NOT NULL,
              patient_id {text} NOT NULL, study_uid {text} NOT NULL, detail {text} NOT NULL,
              count {dialect.integer} NOT NULL)""",
        "CREATE INDEX audit_time ON audit (time)",
        "CREATE INDEX audit_actor ON audit (actor)",
        "CREATE INDEX audit_patient_id ON audit (patient_id)",
        "CREATE INDEX audit_study_uid ON audit (study_uid)",
    ]
    # The audit trail is append-only in the database itself, whatever the code does.
    if dialect.name == "sqlite":
        statements += [
            f"""CREATE TRIGGER audit_append_only_{verb} BEFORE {verb} ON audit
                BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END"""
            for verb in ("UPDATE", "DELETE")
        ]
    else:
        statements += [
            """CREATE FUNCTION pacs_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
               $fn$ BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $fn$""",
            """CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
               FOR EACH ROW EXECUTE FUNCTION pacs_audit_append_only()""",
            """CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
               FOR EACH STATEMENT EXECUTE FUNCTION pacs_audit_append_only()""",
        ]
    return statements


def _fill_folded(db: Any, dialect: Dialect) -> None:
    """Fold what an older index already holds (``pacs.types.fold`` is Python)."""
    for attribute in ATTRIBUTES:
        if not attribute.folded:
            continue
        table, column = TABLES[attribute.level], attribute.column
        rows = db.execute(
            f"SELECT pk, {column} AS value FROM {table} WHERE {column} IS NOT NULL"
        ).fetchall()
        updates = [(fold(str(row["value"])), row["pk"]) for row in rows if row["value"]]
        if updates:
            statement = (
                f"UPDATE {table} SET {fold_column(attribute)} = {dialect.param}"
                f" WHERE pk = {dialect.param}"
            )
            if hasattr(db, "executemany"):
                db.executemany(statement, updates)
            else:
                with db.cursor() as cursor:
                    cursor.executemany(statement, updates)


SCHEMA_VERSION = 3
"""The version the last migration reaches."""


# -- query translation (PS3.4 C.2.2.2), one function per matching kind ---------

ALIAS = {Level.PATIENT: "p", Level.STUDY: "st", Level.SERIES: "se", Level.IMAGE: "i"}
_JOINS = {
    Level.PATIENT: "patients p",
    Level.STUDY: "studies st JOIN patients p ON p.pk = st.patient_pk",
    Level.SERIES: "series se JOIN studies st ON st.pk = se.study_pk"
    " JOIN patients p ON p.pk = st.patient_pk",
    Level.IMAGE: "instances i JOIN series se ON se.pk = i.series_pk"
    " JOIN studies st ON st.pk = se.study_pk JOIN patients p ON p.pk = st.patient_pk",
}
# '\' || col || '\' frames every value of a multi-valued column.
FRAMED = "('\\' || {} || '\\')"


def select(query: Query, dialect: Dialect, count: bool = False) -> Clause:
    where: list[str] = []
    params: list[Any] = []
    for condition in query.conditions:
        sql, values = _condition(condition, dialect)
        where.append(sql)
        params += values
    joins = _JOINS[query.level]
    scope = query.scope
    if scope is not None and not scope.everything:
        sql_scope, values = _scope(scope, query.level, dialect)
        where.append(sql_scope)
        params += values
    selected = []
    selected_params: list[Any] = []  # the SELECT list's come before WHERE's
    for level, column in query.columns:
        if scope is not None and not scope.everything and column in _PATIENT_COUNTS:
            # A patient's counts over the studies the caller may see, never the others.
            sql_count, values = _PATIENT_COUNTS[column](scope, dialect)
            selected.append(f"{sql_count} AS {column}")
            selected_params += values
            continue
        if (level, column) == (Level.IMAGE, "metadata"):
            # Precomputed JSON lives in its own table (migration 2).
            selected.append("m.json AS metadata")
            joins += " LEFT JOIN instance_metadata m ON m.instance_pk = i.pk"
        else:
            selected.append(f"{ALIAS[level]}.{column} AS {column}")
    names = ", ".join(selected) or f"{ALIAS[query.level]}.pk AS pk"
    if count:
        names = "count(*)"
    else:
        params = selected_params + params
    sql = f"SELECT {names} FROM {joins}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if not count and (query.limit is not None or query.offset):
        sql += (
            f" ORDER BY {dialect.order_prefix}{ALIAS[query.level]}.pk"
            f" LIMIT {dialect.param} OFFSET {dialect.param}"
        )
        params += [dialect.unlimited if query.limit is None else query.limit, query.offset]
    return sql, params


def _scope_on(scope: Scope, study: str, patient: str, dialect: Dialect) -> Clause:
    """True for a study (alias ``study``, its patient ``patient``) inside ``scope``."""
    parts, params = [], []
    for values, column in (
        (scope.study_uids, f"{study}.study_instance_uid"),
        (scope.institutions, f"{study}.institution_name_fold"),
        (scope.issuers, f"{patient}.issuer_of_patient_id_fold"),
    ):
        if values:
            parts.append(f"{column} IN ({', '.join([dialect.param] * len(values))})")
            params += sorted(values)
    return ("(" + " OR ".join(parts) + ")") if parts else "1 = 0", params


def _scope(scope: Scope, level: Level, dialect: Dialect) -> Clause:
    if level is not Level.PATIENT:
        return _scope_on(scope, "st", "p", dialect)
    # A patient is seen when one of its studies is, and then only with those.
    inner, params = _scope_on(scope, "vs", "p", dialect)
    return f"EXISTS (SELECT 1 FROM studies vs WHERE vs.patient_pk = p.pk AND {inner})", params


def _visible_counts(expression: str) -> Callable[[Scope, Dialect], Clause]:
    def count(scope: Scope, dialect: Dialect) -> Clause:
        inner, params = _scope_on(scope, "vs", "p", dialect)
        return (
            f"(SELECT coalesce({expression}, 0) FROM studies vs"
            f" WHERE vs.patient_pk = p.pk AND {inner})",
            params,
        )

    return count


_PATIENT_COUNTS = {
    "number_of_patient_related_studies": _visible_counts("count(*)"),
    "number_of_patient_related_series": _visible_counts("sum(vs.number_of_study_related_series)"),
    "number_of_patient_related_instances": _visible_counts(
        "sum(vs.number_of_study_related_instances)"
    ),
}


def _condition(condition: Condition, dialect: Dialect) -> Clause:
    column = f"{ALIAS[condition.level]}.{condition.column}"
    matcher = _MATCHERS[type(condition.match)]
    return matcher(column, condition.match, condition.multi_valued, dialect)


def _single_value(column: str, match: Any, multi_valued: bool, dialect: Dialect) -> Clause:
    if multi_valued:
        sql = dialect.contains_value.format(haystack=FRAMED.format(column), needle=dialect.param)
        return sql, [f"\\{match.value}\\"]
    return f"{column} = {dialect.param}", [match.value]


def _uid_list(column: str, match: Any, multi_valued: bool, dialect: Dialect) -> Clause:
    if multi_valued:
        alternatives = AnyOf(tuple(SingleValue(v) for v in match.values))
        return _any_of(column, alternatives, True, dialect)
    marks = ", ".join([dialect.param] * len(match.values))
    return f"{column} IN ({marks})", list(match.values)


def _wildcard(column: str, match: Any, multi_valued: bool, dialect: Dialect) -> Clause:
    if multi_valued:
        return dialect.any_value_matches(column, match.pattern)
    return dialect.wildcard(column, match.pattern)


def _range(column: str, match: Any, multi_valued: bool, dialect: Dialect) -> Clause:
    parts, params = [], []
    if match.lower is not None:
        parts.append(f"{column} >= {dialect.param}")
        params.append(match.lower)
    if match.upper is not None:
        parts.append(f"{column} <= {dialect.param}")
        params.append(match.upper)
    return " AND ".join(parts) or f"{column} IS NOT NULL", params


def _any_of(column: str, match: Any, multi_valued: bool, dialect: Dialect) -> Clause:
    parts, params = [], []
    for alternative in match.alternatives:
        sql, values = _MATCHERS[type(alternative)](column, alternative, multi_valued, dialect)
        parts.append(sql)
        params += values
    return "(" + " OR ".join(parts) + ")", params


_MATCHERS: dict[type[Match], Callable[[str, Any, bool, Dialect], Clause]] = {
    SingleValue: _single_value,
    UidList: _uid_list,
    Wildcard: _wildcard,
    Range: _range,
    AnyOf: _any_of,
}


def wildcard_regex(pattern: str, value: str = ".") -> str:
    """A C.2.2.2.4 pattern as a regular expression: ``*`` is any run of ``value``
    characters, ``?`` one of them; every other character stands for itself."""
    return "".join(
        f"{value}*" if c == "*" else value if c == "?" else re.escape(c) for c in pattern
    )
