"""Domain errors raised by the archive core.

Front ends catch these and translate them, each with one mapping table
(DIMSE statuses in ``pacs.dimse``, HTTP codes in ``pacs.http``)::

    PacsError
     ├── ConfigError                     bad setting; printed as one line at start-up
     ├── InvalidDatasetError             cannot understand the data set
     │    └── DatasetMismatchError       data set disagrees with the request
     ├── InvalidQueryError               a query key's value cannot be matched
 ├── ConflictError                   same SOP Instance UID, different content
     ├── NotFoundError                   no such patient/study/series/instance
     │    └── OutsideScopeError          there is, but the caller may not see it
     ├── UnsupportedTransferSyntaxError  no codec for the transfer syntax
     ├── CorruptDataError                a stored instance's pixel data cannot be decoded
     └── StorageError                    blob store or index failed
          └── StorageFullError           no space left
"""


class PacsError(Exception):
    """Base of every error the archive raises on purpose."""


class ConfigError(PacsError):
    """A setting has a wrong value; the message is shown to the operator as is."""


class InvalidDatasetError(PacsError):
    """The data set cannot be parsed or lacks what the archive requires."""


class DatasetMismatchError(InvalidDatasetError):
    """The data set contradicts its request, e.g. a SOP Class UID that differs."""


class InvalidQueryError(PacsError):
    """A query key has a value no matching rule accepts (a malformed date or UID)."""


class ConflictError(PacsError):
    """A SOP Instance UID is already stored with different content."""


class NotFoundError(PacsError):
    """The requested entity does not exist."""


class OutsideScopeError(NotFoundError):
    """A study the caller may not see: answered exactly as one that does not exist."""


class UnsupportedTransferSyntaxError(PacsError):
    """No installed codec handles this transfer syntax."""


class CorruptDataError(PacsError):
    """A stored instance cannot be read as it claims to be (a broken codestream, a
    short Pixel Data value): the request was fine, the stored data is not."""


class StorageError(PacsError):
    """Writing to or reading from the blob store or index failed."""


class StorageFullError(StorageError):
    """The blob store or the index has no space left."""
