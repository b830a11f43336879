"""Facts of the DICOM encoding (PS3.5 7.1, 7.5) for code that walks encoded bytes.

The archive core (checking what a sender encoded) and the imaging core
(re-encoding it) both read element headers without pydicom; this is what
they share, with no imports, so that neither depends on the other.
"""

# VRs whose explicit-VR header has 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD

__all__ = ["ITEM", "ITEM_DELIMITER", "LONG_VRS", "SEQUENCE_DELIMITER", "UNDEFINED_LENGTH"]
