"""Settings: defaults, overridden by a TOML file, then ``PACS_*`` variables, then flags.

Loaded once in ``pacs.app`` / ``pacs.cli`` and passed down as a frozen object;
nothing deeper reads the environment. Every key is listed with its default in
``docker/pacs.example.toml``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import UID

from pacs.core.archive import DuplicatePolicy
from pacs.errors import ConfigError
from pacs.index import is_postgres_url
from pacs.types import Scope, fold
from storage import (
    S3Credentials,
    S3Location,
    StorageUrlError,
    parse_storage_url,
    space_kept_free,
)

ENV_PREFIX = "PACS_"
# The AWS SDKs' variables, taken when neither a PACS_ variable nor the file sets the key.
AWS_ENVIRONMENT = {
    "s3_access_key": "AWS_ACCESS_KEY_ID",
    "s3_secret_key": "AWS_SECRET_ACCESS_KEY",
    "s3_session_token": "AWS_SESSION_TOKEN",
}

_NODE = re.compile(r"(?P<ae>[^@]{1,16})@(?P<host>[A-Za-z0-9.\-:\[\]_]+):(?P<port>\d{1,5})")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_\-]{0,62})(\.[A-Za-z0-9_\-]{1,63})*")


SERVICES = ("store", "find", "move", "get")
"""What a node may ask of us: C-STORE, C-FIND, C-MOVE, C-GET."""


@dataclass(frozen=True, slots=True)
class Node:
    """A remote DICOM application entity the archive knows."""

    ae_title: str
    host: str
    port: int
    allow: frozenset[str] = frozenset(SERVICES)
    transfer_syntaxes: tuple[str, ...] = ()
    """Transfer syntaxes the node prefers to receive, best first. Empty: as stored,
    with Explicit and Implicit VR Little Endian offered as fall-backs."""
    institutions: tuple[str, ...] = ()
    """With ``issuers``: when either is given, the node finds and retrieves only the
    studies of these Institution Names (or patients of these Issuers of Patient
    ID), like a ``hospital`` account. Empty: every study."""
    issuers: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    @property
    def scope(self) -> Scope:
        if not (self.institutions or self.issuers):
            return Scope.all()
        return Scope(
            institutions=frozenset(fold(i) for i in self.institutions),
            issuers=frozenset(fold(i) for i in self.issuers),
        )


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("pacs-data")
    ae_title: str = "PACS"
    dicom_port: int = 11112
    http_port: int = 8080
    host: str = "127.0.0.1"
    nodes: tuple[Node, ...] = ()
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP
    max_associations: int = 64
    dicom_processes: int = 0
    """Processes serving DICOM associations (0: one per CPU core). Python runs one
    thread at a time per process; several processes use every core."""
    max_pdu_size: int = 1 << 20
    """Largest PDU we accept; large PDUs cut per-fragment overhead on fast links."""
    network_timeout: float = 120.0
    """Seconds an association may stay silent before it is aborted."""
    dimse_timeout: float = 120.0
    acse_timeout: float = 30.0
    log_level: str = "info"
    known_nodes_only: bool = False
    """Refuse associations whose calling AE title is not among ``nodes``."""
    case_insensitive_names: bool = True
    """Match person names in queries regardless of case (PS3.4 C.2.2.2.1.1)."""
    cors_origins: tuple[str, ...] = ()
    """Web origins allowed to call DICOMweb from a browser (``*`` for any)."""
    jpeg_quality: int = 90
    """libjpeg quality (1-100) when a lossy JPEG syntax is asked for."""
    lossy_compression_ratio: float = 10.0
    """Size ratio aimed at when lossy JPEG 2000 or HTJ2K is asked for."""
    jpegls_near: int = 2
    """Largest error per sample when JPEG-LS near-lossless is asked for."""
    storage_url: str = ""
    """Where blobs go: ``s3://BUCKET/PREFIX?endpoint=HOST:PORT&secure=false`` or a
    folder; empty: ``blobs/`` in the data folder."""
    index_url: str = ""
    """The metadata index: ``postgresql://USER@HOST:PORT/DATABASE`` or a SQLite file;
    empty: ``index.sqlite`` in the data folder."""
    s3_access_key: str = field(default="", repr=False)
    s3_secret_key: str = field(default="", repr=False)
    s3_session_token: str = field(default="", repr=False)
    direct_io: bool = False
    """Write images to the data folder (and the spool) with direct I/O, past the
    page cache: less CPU per stored image where fresh memory is dear (a virtual
    machine whose host takes back free guest memory), but a just-stored study is
    then read from the disk (``storage.filesystem``)."""
    min_free_space: str = "1%"
    """Space a store must leave free where the data folder's images (or the S3
    spool) are: a size (``500MB``, ``2GiB``) or a share of that filesystem
    (``1%``); ``0``: none. The index and its journal usually share that disk and
    need room to record what was stored; an image that would go below it is
    refused as out of resources (0xA700), as dcm4chee refuses past its storage
    threshold."""
    upload_spool: bool = True
    """With S3: acknowledge once fsynced in ``spool/`` in the data folder, upload after."""
    upload_workers: int = 4
    """Concurrent uploads from the spool to S3, per process."""
    index_pool_size: int = 16
    """PostgreSQL connections per process, at most."""
    tls_cert: str = ""
    """PEM certificate (chain) for HTTPS and DICOM TLS; with ``tls_key``."""
    tls_key: str = ""
    dicom_tls_port: int = 0
    """DICOM over TLS (PS3.15 B.1; 2762 is its registered port); 0: off."""
    tls_client_ca: str = ""
    """PEM CA bundle: DICOM TLS peers must present a certificate it signed."""
    check_node_address: bool = False
    """A known node's associations must come from its configured host."""

    def node(self, ae_title: str) -> Node | None:
        title = ae_title.strip()
        return next((n for n in self.nodes if n.ae_title == title), None)

    @property
    def index_path(self) -> Path:
        return self.data_dir / "index.sqlite"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def spool_dir(self) -> Path:
        return self.data_dir / "spool"

    @property
    def blob_store_url(self) -> str:
        return self.storage_url or str(self.blob_dir)

    @property
    def index_location(self) -> str:
        return self.index_url or str(self.index_path)

    @property
    def uses_s3(self) -> bool:
        return isinstance(parse_storage_url(self.blob_store_url), S3Location)

    def keep_free(self) -> tuple[int, float]:
        """``min_free_space`` as (bytes, percent): one of them is 0."""
        return _parse_space(self.min_free_space)

    def kept_free_bytes(self, total: int) -> int:
        """``min_free_space`` on a filesystem of ``total`` bytes, as the stores keep it."""
        return space_kept_free(total, *self.keep_free())

    def s3_credentials(self) -> S3Credentials:
        return S3Credentials(
            access_key=self.s3_access_key or None,
            secret_key=self.s3_secret_key or None,
            session_token=self.s3_session_token or None,
        )


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def load_settings(
    flags: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build ``Settings`` with precedence flag > environment > file > default.

    ``flags`` holds only the options given on the command line (``None`` values
    are ignored). Raises ``ConfigError`` with a one-line message on any bad value.
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {
        name: environ[variable] for name, variable in AWS_ENVIRONMENT.items() if variable in environ
    }
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        raw.update(_read_toml(Path(config_file)))
    for name in _FIELDS:
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ:
            raw[name] = environ[env_name]
    for name, value in (flags or {}).items():
        if value is not None and value != []:
            raw[name] = value
    return _build(raw)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting {unknown[0]!r}")
    return data


def _build(raw: dict[str, Any]) -> Settings:
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name not in _FIELDS:
            raise ConfigError(f"unknown setting {name!r}")
        values[name] = _CONVERTERS.get(name, _as_str)(name, value)
    settings = Settings(**values)
    ports = [settings.dicom_port, settings.http_port] + (
        [settings.dicom_tls_port] if settings.dicom_tls_port else []
    )
    if len(set(ports)) != len(ports):
        raise ConfigError(
            "dicom_port, http_port and dicom_tls_port must differ, not "
            + ", ".join(map(str, ports))
        )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise ConfigError("tls_cert and tls_key go together: give both or neither")
    if (settings.dicom_tls_port or settings.tls_client_ca) and not settings.tls_cert:
        raise ConfigError("dicom_tls_port and tls_client_ca need tls_cert and tls_key")
    return settings


def _as_str(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, not {value!r}")
    return value


def _as_port(name: str, value: Any) -> int:
    port = _as_int(name, value)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name} must be between 1 and 65535, not {port}")
    return port


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, float) and not value.is_integer():
        # int() would silently truncate a TOML float such as 104.5
        raise ConfigError(f"{name} must be an integer, not {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be an integer, not {value!r}") from None
    if isinstance(value, bool) or number < 0:
        raise ConfigError(f"{name} must be a non-negative integer, not {value!r}")
    return number


def _as_positive_int(name: str, value: Any) -> int:
    number = _as_int(name, value)
    if number == 0:
        raise ConfigError(f"{name} must be at least 1")
    return number


def _as_seconds(name: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number of seconds, not {value!r}") from None
    if not seconds > 0:
        raise ConfigError(f"{name} must be positive, not {value!r}")
    if not math.isfinite(seconds):
        # socket timeouts cannot be infinite: the server would fail at start-up
        raise ConfigError(f"{name} must be a finite number of seconds, not {value!r}")
    return seconds


def check_ae_title(name: str, value: Any) -> str:
    """PS3.5 Table 6.2-1 (AE): 1 to 16 characters, no backslash or control characters."""
    title = _as_str(name, value).strip()
    if (
        not title
        or len(title) > 16
        or "\\" in title
        or any(ord(c) < 32 or ord(c) > 126 for c in title)
    ):
        raise ConfigError(
            f"{name} {value!r} is not a valid AE title (1-16 printable ASCII characters,"
            " no backslash)"
        )
    return title


def _as_host(name: str, value: Any) -> str:
    host = _as_str(name, value).strip()
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host.strip("[]")
    except ValueError:
        pass
    if not _HOSTNAME.fullmatch(host):
        raise ConfigError(f"{name} {value!r} is not an IP address or host name")
    return host


def _as_path(name: str, value: Any) -> Path:
    return Path(_as_str(name, value)).expanduser()


def parse_node(text: str) -> Node:
    match = _NODE.fullmatch(text.strip())
    if not match:
        raise ConfigError(f"node {text!r} is not of the form AE@HOST:PORT")
    return Node(
        ae_title=check_ae_title("node AE title", match["ae"]),
        host=_as_host("node host", match["host"]),
        port=_as_port("node port", match["port"]),
    )


def _as_nodes(name: str, value: Any) -> tuple[Node, ...]:
    if isinstance(value, str):
        value = [part for part in re.split(r"[,\s]+", value) if part]
    if not isinstance(value, list):
        raise ConfigError(f"{name} must be a list of nodes")
    nodes = []
    for item in value:
        if isinstance(item, str):
            nodes.append(parse_node(item))
        elif isinstance(item, dict):
            unknown = set(item) - {
                "ae_title",
                "host",
                "port",
                "allow",
                "transfer_syntaxes",
                "institutions",
                "issuers",
            }
            if unknown:
                raise ConfigError(f"node {item!r}: unknown key {sorted(unknown)[0]!r}")
            try:
                nodes.append(
                    Node(
                        ae_title=check_ae_title("node ae_title", item["ae_title"]),
                        host=_as_host("node host", item["host"]),
                        port=_as_port("node port", item["port"]),
                        allow=_as_services(item.get("allow", list(SERVICES))),
                        transfer_syntaxes=_as_transfer_syntaxes(item.get("transfer_syntaxes", [])),
                        institutions=_as_names("node institutions", item.get("institutions", [])),
                        issuers=_as_names("node issuers", item.get("issuers", [])),
                    )
                )
            except KeyError as exc:
                raise ConfigError(f"node {item!r} lacks {exc.args[0]!r}") from None
        else:
            raise ConfigError(f"node {item!r} is neither AE@HOST:PORT nor a table")
    titles = [n.ae_title for n in nodes]
    duplicates = {t for t in titles if titles.count(t) > 1}
    if duplicates:
        raise ConfigError(f"node {sorted(duplicates)[0]} is defined twice")
    return tuple(nodes)


def _as_names(name: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f"{name} must be a list of names, not {value!r}")
    return tuple(v.strip() for v in value)


def _as_file(name: str, value: Any) -> str:
    path = _as_str(name, value).strip()
    if path and not Path(path).expanduser().is_file():
        raise ConfigError(f"{name}: {path} is not a readable file")
    return str(Path(path).expanduser()) if path else ""


def _as_optional_port(name: str, value: Any) -> int:
    return 0 if str(value).strip() in ("", "0") else _as_port(name, value)


def _as_services(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"node allow must be a list of services, not {value!r}")
    services = {v.lower() for v in value}
    unknown = services - set(SERVICES)
    if unknown:
        raise ConfigError(
            f"node allow: unknown service {sorted(unknown)[0]!r} (use {', '.join(SERVICES)})"
        )
    return frozenset(services)


def _as_transfer_syntaxes(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"node transfer_syntaxes must be a list of UIDs, not {value!r}")
    for uid in value:
        if not UID(uid).is_transfer_syntax:
            raise ConfigError(f"node transfer_syntaxes: {uid!r} is not a known transfer syntax")
    return tuple(value)


def _in_range(low: float, high: float, convert: Any) -> Any:
    def check(name: str, value: Any) -> Any:
        number = convert(name, value)
        if not low <= number <= high:
            raise ConfigError(f"{name} must be between {low:g} and {high:g}, not {value!r}")
        return number

    return check


def _as_number(name: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ConfigError(f"{name} must be a number, not {value!r}")
    return number


_SPACE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*(%|[kmgt]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def _parse_space(text: str) -> tuple[int, float]:
    match = _SPACE.fullmatch(text)
    if match is None:
        raise ValueError(text)
    number, unit = float(match[1]), (match[2] or "").lower()
    if unit == "%":
        if number >= 50:
            raise ValueError(text)
        return 0, number
    base = unit[:1]
    scale = 1024 ** "bkmgt".index(base) if unit[1:2] == "i" else _UNITS[base]
    return int(number * scale), 0.0


def _as_space(name: str, value: Any) -> str:
    text = str(value).strip()
    try:
        _parse_space(text)
    except ValueError:
        raise ConfigError(
            f"{name} must be a size (500MB, 2GiB), a share of the disk under 50% (1%)"
            f" or 0, not {value!r}"
        ) from None
    return text


def _as_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, not {value!r}")


def _as_origins(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in re.split(r"[,\s]+", value) if part]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name} must be a list of origins, not {value!r}")
    for origin in value:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ConfigError(
                f"{name}: {origin!r} is not an origin like https://viewer.example.org"
            )
    return tuple(value)


def _as_storage_url(name: str, value: Any) -> str:
    text = _as_str(name, value).strip()
    if text:
        try:
            parse_storage_url(text)
        except StorageUrlError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return text


def _as_index_url(name: str, value: Any) -> str:
    text = _as_str(name, value).strip()
    if "://" in text and not (is_postgres_url(text) or text.startswith("sqlite://")):
        raise ConfigError(
            f"{name} must be postgresql://USER@HOST:PORT/DATABASE, sqlite:///PATH or a path,"
            f" not {redact_url(text)!r}"
        )
    return text


def redact_url(url: str) -> str:
    """``url`` with any password replaced, for logs and messages."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _as_policy(name: str, value: Any) -> DuplicatePolicy:
    try:
        return DuplicatePolicy(_as_str(name, value).lower())
    except ValueError:
        choices = ", ".join(p.value for p in DuplicatePolicy)
        raise ConfigError(f"{name} must be one of {choices}, not {value!r}") from None


def _as_log_level(name: str, value: Any) -> str:
    level = _as_str(name, value).lower()
    if level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{name} must be debug, info, warning or error, not {value!r}")
    return level


_CONVERTERS = {
    "data_dir": _as_path,
    "ae_title": check_ae_title,
    "dicom_port": _as_port,
    "http_port": _as_port,
    "host": _as_host,
    "nodes": _as_nodes,
    "duplicate_policy": _as_policy,
    "max_associations": _as_positive_int,
    "dicom_processes": _as_int,
    "max_pdu_size": _as_int,
    "network_timeout": _as_seconds,
    "dimse_timeout": _as_seconds,
    "acse_timeout": _as_seconds,
    "log_level": _as_log_level,
    "known_nodes_only": _as_bool,
    "case_insensitive_names": _as_bool,
    "cors_origins": _as_origins,
    "jpeg_quality": _in_range(1, 100, _as_int),
    "lossy_compression_ratio": _in_range(1.5, 200, _as_number),
    "jpegls_near": _in_range(1, 32, _as_int),
    "storage_url": _as_storage_url,
    "index_url": _as_index_url,
    "upload_spool": _as_bool,
    "direct_io": _as_bool,
    "min_free_space": _as_space,
    "upload_workers": _as_positive_int,
    "index_pool_size": _as_positive_int,
    "tls_cert": _as_file,
    "tls_key": _as_file,
    "dicom_tls_port": _as_optional_port,
    "tls_client_ca": _as_file,
    "check_node_address": _as_bool,
}

__all__ = [
    "AWS_ENVIRONMENT",
    "ENV_PREFIX",
    "SERVICES",
    "Node",
    "Settings",
    "load_settings",
    "parse_node",
    "redact_url",
]
