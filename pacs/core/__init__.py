"""The archive core: ingest, index and retrieve, independent of any protocol."""

from pacs.core.archive import Archive, DuplicatePolicy

__all__ = ["Archive", "DuplicatePolicy"]
