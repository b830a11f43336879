"""C-FIND SCP for the Patient Root, Study Root and Patient/Study Only models (PS3.4 C.4.1)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, cast

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pynetdicom import evt
from pynetdicom.dimse_primitives import C_FIND

from pacs.config import Settings
from pacs.core import Archive
from pacs.dimse.identifier import (
    FIND_MODELS,
    NOT_AUTHORIZED,
    STUDY_ROOT,
    UNABLE_TO_PROCESS,
    IdentifierError,
    parse_identifier,
    permitted,
)
from pacs.errors import PacsError
from pacs.index.schema import LEVELS, UNIQUE_KEYS, Level

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
_ERROR_COMMENT_LENGTH = 64

FindResponse = tuple[int | Dataset, Dataset | None]


def handle_c_find(event: evt.Event, archive: Archive, settings: Settings) -> Iterator[FindResponse]:
    """PS3.4 C.4.1.2: one pending response per match, then success; stop on C-CANCEL.

    Every requested key is returned, empty when the index does not hold it,
    and the unique keys of the query level and the levels above are always
    included (C.4.1.2.2, hierarchical). Like dcm4chee, responses also name the
    AE to retrieve from (Retrieve AE Title) and say the images are ONLINE.
    """
    request = cast(C_FIND, event.request)
    calling = event.assoc.requestor.ae_title
    if not permitted(settings, calling, "find"):
        yield _failure(NOT_AUTHORIZED, f"{calling} may not query this archive"), None
        return
    model = FIND_MODELS[str(request.AffectedSOPClassUID)]
    try:
        query = parse_identifier(event.identifier, model)
    except IdentifierError as exc:
        yield _failure(exc.status, str(exc)), None
        return
    except Exception as exc:  # the identifier cannot even be decoded
        yield _failure(UNABLE_TO_PROCESS, f"identifier cannot be decoded: {exc}"), None
        return

    levels = LEVELS[: LEVELS.index(query.level) + 1]
    if model == STUDY_ROOT:
        levels = levels[1:]
    unique_keys = [UNIQUE_KEYS[level].keyword for level in levels]
    requested = [e.keyword for e in query.elements if e.keyword]
    return_keys = list(dict.fromkeys(requested + unique_keys))
    try:
        matches = archive.search(
            query.level,
            query.keys,
            return_keys,
            case_insensitive_names=settings.case_insensitive_names,
        )
        count = 0
        for values in matches:
            if event.is_cancelled:
                log.info("C-FIND from %s cancelled after %d matches", calling, count)
                yield CANCEL, None
                return
            count += 1
            yield PENDING, _response(query.level, query.elements, unique_keys, values, settings)
            # Let the DUL thread have the GIL: it sends this response now and
            # sees a C-CANCEL at once, instead of after the whole search.
            time.sleep(0)
    except PacsError as exc:
        yield _failure(UNABLE_TO_PROCESS, str(exc)), None
        return
    except Exception:
        log.exception("C-FIND from %s failed", calling)
        yield _failure(UNABLE_TO_PROCESS, "internal error while searching"), None
        return
    log.info("C-FIND %s level from %s: %d matches", query.level.value, calling, count)
    yield 0x0000, None


def _response(
    level: Level,
    elements: tuple[DataElement, ...],
    unique_keys: list[str],
    values: dict[str, Any],
    settings: Settings,
) -> Dataset:
    response = Dataset()
    response.QueryRetrieveLevel = level.value
    response.RetrieveAETitle = settings.ae_title
    response.InstanceAvailability = "ONLINE"
    for element in elements:
        if element.VR == "SQ":
            response.add_new(element.tag, "SQ", Sequence())
            continue
        value = values.get(element.keyword) if element.keyword else None
        response.add_new(element.tag, _concrete_vr(element.VR), _element_value(value))
    for keyword in unique_keys:
        if keyword not in response and values.get(keyword) is not None:
            setattr(response, keyword, values[keyword])
    if _has_non_ascii(response):
        # PS3.4 C.4.1.1.3.1: the response says how its text is encoded.
        response.SpecificCharacterSet = "ISO_IR 192"
    return response


def _element_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        return [str(v) for v in value]
    return value


def _concrete_vr(vr: str) -> str:
    # Ambiguous dictionary VRs ("US or SS") reach us from implicit VR identifiers.
    return vr.split(" or ")[0] if " or " in vr else vr


def _has_non_ascii(dataset: Dataset) -> bool:
    for element in dataset:
        value = element.value
        texts = value if isinstance(value, MultiValue | list) else [value]
        if any(not str(text).isascii() for text in texts if text is not None):
            return True
    return False


def _failure(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment.replace("\\", "/")[:_ERROR_COMMENT_LENGTH]
    return status
