"""pacs: a self-hosted PACS and teleradiology server."""

__version__ = "0.1.0"
