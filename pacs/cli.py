"""The ``pacs`` command: ``serve`` and ``import``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from pacs import __version__
from pacs.config import ENV_PREFIX, load_settings
from pacs.errors import ConfigError


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", help=f"TOML settings file (also {ENV_PREFIX}CONFIG)"
    )
    parser.add_argument("--data-dir", metavar="DIR", help="archive folder (default ./pacs-data)")
    parser.add_argument(
        "--duplicate-policy",
        choices=("keep", "replace", "reject"),
        help="same SOP Instance UID with different content: keep the first copy"
        " (default), replace it, or reject the new one",
    )
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pacs",
        description="Self-hosted PACS: DICOM store, query/retrieve and DICOMweb.",
        epilog=f"Every option can also be set in the TOML file or as {ENV_PREFIX}<NAME>"
        " (e.g. PACS_DICOM_PORT); flags win over the environment, which wins over the file.",
    )
    parser.add_argument("--version", action="version", version=f"pacs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the DICOM node and the HTTP server")
    _common(serve)
    serve.add_argument("--ae-title", help="our AE title (default PACS)")
    serve.add_argument("--dicom-port", metavar="PORT", help="DICOM port (default 11112)")
    serve.add_argument("--http-port", metavar="PORT", help="HTTP port (default 8080)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument(
        "--node",
        dest="nodes",
        action="append",
        metavar="AE@HOST:PORT",
        help="a known remote DICOM node; repeat for several",
    )
    serve.add_argument(
        "--cors-origin",
        dest="cors_origins",
        action="append",
        metavar="ORIGIN",
        help="a web origin allowed to call DICOMweb from a browser (* for any); repeatable",
    )
    serve.add_argument(
        "--known-nodes-only",
        action="store_const",
        const=True,
        help="refuse associations from calling AE titles not given with --node",
    )
    serve.add_argument(
        "--max-associations", metavar="N", help="concurrent associations per process (64)"
    )
    serve.add_argument(
        "--dicom-processes",
        metavar="N",
        help="processes serving DICOM associations (default: one per CPU core)",
    )

    importer = commands.add_parser(
        "import", help="bulk-import DICOM files and folders into the archive"
    )
    _common(importer)
    importer.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    importer.add_argument("--workers", type=int, default=4, help="parallel files (default 4)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags: dict[str, Any] = {
        key: value
        for key, value in vars(args).items()
        if key not in ("command", "config", "paths", "workers")
    }
    try:
        settings = load_settings(flags, args.config)
        if args.command == "serve":
            from pacs.app import serve

            serve(settings)
            return 0
        return _import(settings, args.paths, args.workers)
    except ConfigError as exc:
        print(f"pacs: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _import(settings: Any, paths: list[str], workers: int) -> int:
    from pacs.app import build_archive, configure_libraries
    from pacs.bulk_import import import_paths, print_summary

    configure_libraries()
    archive = build_archive(settings)
    try:
        summary = import_paths(archive, paths, workers=max(1, workers))
    finally:
        archive.close()
    print_summary(summary)
    return 1 if summary.counts["rejected"] else 0


if __name__ == "__main__":
    sys.exit(main())
