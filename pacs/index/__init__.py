"""The metadata index: patients, studies, series and instances.

``Index`` is the protocol the archive core depends on; ``SqliteIndex`` is the
embedded backend. Backends never import ``pacs.core``.
"""

from pacs.index.base import Index, InstanceRecord, StoredInstance
from pacs.index.schema import ATTRIBUTES, Attribute, Kind, Level
from pacs.index.sqlite import SqliteIndex

__all__ = [
    "ATTRIBUTES",
    "Attribute",
    "Index",
    "InstanceRecord",
    "Kind",
    "Level",
    "SqliteIndex",
    "StoredInstance",
]
