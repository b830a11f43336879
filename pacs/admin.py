"""Administration on the command line: users, tokens, shares and the audit trail.

::

    pacs user add NAME --role admin|radiologist|hospital|modality
                  [--institution NAME ...] [--issuer ISSUER ...]   (asks the password)
    pacs user list | passwd NAME | disable NAME | enable NAME
    pacs token create --user NAME [--expires 30d] [--label TEXT]   (prints it once)
    pacs token list [--user NAME] | revoke ID
    pacs share --study UID --with HOSPITAL | --link [--expires 7d] | --revoke ...
    pacs audit [--since WHEN] [--until WHEN] [--user NAME] [--patient ID] [--study UID]
               [--json]

They work on the index the settings name, so also while the server runs; a
change is seen by every server process at its next request. Each is recorded
in the audit trail, as the system user running it (``$USER``).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson

from pacs.config import Settings
from pacs.core.access import ANONYMOUS, Principal, Role, parse_duration
from pacs.core.audit import atna_message
from pacs.core.security import Security
from pacs.errors import ConfigError, NotFoundError, PacsError
from pacs.index.access import AccessStore, AuditQuery

COMMANDS = ("user", "token", "share", "audit")


def system_operator() -> str:
    """Who ran a command at the server, for the audit trail."""
    return f"system:{os.environ.get('USER') or getpass.getuser()}"


def add_parsers(commands: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    user = commands.add_parser("user", help="add, list, change or disable user accounts")
    common(user)
    user.add_argument("admin_action", choices=("add", "list", "passwd", "disable", "enable"))
    user.add_argument("admin_name", nargs="?", metavar="NAME")
    user.add_argument("--role", dest="admin_role", choices=[r.value for r in Role])
    user.add_argument(
        "--institution",
        dest="admin_institutions",
        action="append",
        default=[],
        metavar="NAME",
        help="(hospital) an Institution Name whose studies it sees; repeatable",
    )
    user.add_argument(
        "--issuer",
        dest="admin_issuers",
        action="append",
        default=[],
        metavar="ISSUER",
        help="(hospital) an Issuer of Patient ID whose patients' studies it sees; repeatable",
    )
    user.add_argument(
        "--password-stdin",
        dest="admin_password_stdin",
        action="store_true",
        help="read the password from the first line of standard input (scripts)",
    )

    token = commands.add_parser("token", help="bearer tokens for API clients")
    common(token)
    token.add_argument("admin_action", choices=("create", "list", "revoke"))
    token.add_argument("admin_id", nargs="?", metavar="ID", help="(revoke) the token's ID")
    token.add_argument("--user", dest="admin_user", metavar="NAME")
    token.add_argument("--expires", dest="admin_expires", default="30d", metavar="DURATION")
    token.add_argument("--label", dest="admin_label", default="", metavar="TEXT")

    share = commands.add_parser("share", help="share a study with a hospital, or as a link")
    common(share)
    share.add_argument("--study", dest="admin_study", required=True, metavar="UID")
    what = share.add_mutually_exclusive_group(required=True)
    what.add_argument("--with", dest="admin_with", metavar="HOSPITAL", help="a hospital account")
    what.add_argument(
        "--link", dest="admin_link", action="store_true", help="make a read-only link"
    )
    what.add_argument("--list", dest="admin_list", action="store_true")
    share.add_argument("--expires", dest="admin_expires", default="7d", metavar="DURATION")
    share.add_argument(
        "--revoke", dest="admin_revoke", action="store_true", help="with --with: end the share"
    )
    share.add_argument(
        "--base-url",
        dest="admin_base_url",
        default="",
        metavar="URL",
        help="the server's address as hospitals reach it, to print the link's URL",
    )

    audit = commands.add_parser("audit", help="print or export the audit trail")
    common(audit)
    audit.add_argument("--since", dest="admin_since", default="", metavar="WHEN")
    audit.add_argument("--until", dest="admin_until", default="", metavar="WHEN")
    audit.add_argument("--user", dest="admin_user", default="", metavar="NAME|AE")
    audit.add_argument("--patient", dest="admin_patient", default="", metavar="ID")
    audit.add_argument("--study", dest="admin_study", default="", metavar="UID")
    audit.add_argument("--action", dest="admin_audit_action", default="", metavar="ACTION")
    audit.add_argument(
        "--json",
        dest="admin_json",
        action="store_true",
        help="JSON lines named after PS3.15 A.5 (IHE ATNA) audit message fields",
    )
    audit.add_argument("--limit", dest="admin_limit", type=int, default=100_000)


def run(settings: Settings, args: argparse.Namespace) -> int:
    from pacs.app import build_index

    index = build_index(settings)
    store = cast(AccessStore, index)
    # The trail is written by the archive in the server; here, directly.
    from pacs.core.audit import AuditTrail

    trail = AuditTrail(store.append_audit)
    security = Security(store, trail)
    operator = system_operator()
    try:
        if args.command == "user":
            return _user(security, args, operator)
        if args.command == "token":
            return _token(security, args, operator)
        if args.command == "share":
            return _share(security, args, operator)
        return _audit(store, args)
    except NotFoundError as exc:
        print(f"pacs: {exc}", file=sys.stderr)
        return 1
    except (ValueError, PacsError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(str(exc)) from None
    finally:
        trail.close()
        index.close()


def _password(args: argparse.Namespace, name: str) -> str:
    if args.admin_password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"password for {name}: ")
    if getpass.getpass("again: ") != first:
        raise ConfigError("the two passwords differ")
    return first


def _user(security: Security, args: argparse.Namespace, operator: str) -> int:
    action, name = args.admin_action, args.admin_name
    if action == "list":
        for user in security.store.users():
            scope = ", ".join([*user.institutions, *(f"issuer {i}" for i in user.issuers)])
            state = "disabled" if user.disabled else "active"
            print(f"{user.username}\t{user.role}\t{state}\t{scope}")
        return 0
    if not name:
        raise ConfigError(f"pacs user {action} needs a user name")
    if action == "add":
        if not args.admin_role:
            raise ConfigError("pacs user add needs --role")
        user = security.add_user(
            name,
            _password(args, name),
            Role(args.admin_role),
            institutions=args.admin_institutions,
            issuers=args.admin_issuers,
            by=operator,
        )
        print(f"added {user.username} ({user.role})")
    elif action == "passwd":
        security.set_password(name, _password(args, name), by=operator)
        print(f"password of {name} changed")
    else:
        security.set_disabled(name, action == "disable", by=operator)
        print(
            f"{name} {action}d"
            + (": its sessions and tokens are revoked" if action == "disable" else "")
        )
    return 0


def _token(security: Security, args: argparse.Namespace, operator: str) -> int:
    if args.admin_action == "create":
        if not args.admin_user:
            raise ConfigError("pacs token create needs --user")
        text, record = security.create_token(
            args.admin_user, parse_duration(args.admin_expires), args.admin_label, by=operator
        )
        print(text)
        print(
            f"token {record.identifier} for {record.username}, valid until {record.expires_at};"
            " it is shown only now: give it as 'Authorization: Bearer ...'",
            file=sys.stderr,
        )
        return 0
    if args.admin_action == "revoke":
        if not args.admin_id:
            raise ConfigError("pacs token revoke needs the token's ID (see pacs token list)")
        if not security.revoke(args.admin_id, operator):
            raise NotFoundError(f"no active token {args.admin_id}")
        print(f"token {args.admin_id} revoked")
        return 0
    for credential in security.store.credentials(args.admin_user or "", "token"):
        state = "revoked" if credential.revoked_at else "active"
        print(
            f"{credential.identifier}\t{credential.username}\t{state}"
            f"\tuntil {credential.expires_at}\t{credential.label}"
        )
    return 0


def _share(security: Security, args: argparse.Namespace, operator: str) -> int:
    principal = Principal(operator, Role.ADMIN, ANONYMOUS.scope)
    study = args.admin_study
    if args.admin_list:
        for share in security.store.shares(study_uid=study):
            print(f"shared with {share.username} by {share.granted_by} since {share.created_at}")
        for link in security.store.credentials(kind="link"):
            if link.study_uid == study and not link.revoked_at:
                print(f"link {link.identifier} by {link.username} until {link.expires_at}")
        return 0
    if args.admin_link:
        text, record = security.create_link(
            principal, study, parse_duration(args.admin_expires), "command line"
        )
        base = args.admin_base_url.rstrip("/")
        print(f"{base}/share/{text}" if base else f"/share/{text}")
        print(
            f"link {record.identifier}, valid until {record.expires_at};"
            f" revoke with: pacs token revoke {record.identifier}",
            file=sys.stderr,
        )
        return 0
    if args.admin_revoke:
        if not security.unshare(principal, study, args.admin_with, "command line"):
            raise NotFoundError(f"{study} is not shared with {args.admin_with}")
        print(f"{study} no longer shared with {args.admin_with}")
        return 0
    security.share(principal, study, args.admin_with, "command line")
    print(f"{study} shared with {args.admin_with}")
    return 0


def _when(text: str) -> str:
    """An ISO date or time, or a duration back from now (``7d``: the last week)."""
    if not text:
        return ""
    try:
        return datetime.fromisoformat(text).astimezone(UTC).isoformat(timespec="milliseconds")
    except ValueError:
        seconds = parse_duration(text)
        return (datetime.now(UTC) - timedelta(seconds=seconds)).isoformat(timespec="milliseconds")


def _audit(store: AccessStore, args: argparse.Namespace) -> int:
    query = AuditQuery(
        since=_when(args.admin_since),
        until=_when(args.admin_until),
        actor=args.admin_user,
        patient_id=args.admin_patient,
        study_uid=args.admin_study,
        action=args.admin_audit_action,
        limit=max(1, args.admin_limit),
    )
    out = sys.stdout
    for event in store.audit(query):
        if args.admin_json:
            out.write(orjson.dumps(atna_message(event)).decode() + "\n")
        else:
            where = f" from {event.address}" if event.address else ""
            count = f" x{event.count}" if event.count > 1 else ""
            about = " ".join(
                part
                for part in (
                    f"patient {event.patient_id}" if event.patient_id else "",
                    f"study {event.study_uid}" if event.study_uid else "",
                )
                if part
            )
            out.write(
                f"{event.time}  {event.action:9} {event.outcome:8} {event.actor or '-'}"
                f" ({event.actor_kind}){where}{count}  {about}  {event.detail}\n"
            )
    return 0
