"""Codecs on imagecodecs: a pydicom decoding plugin and the frame encoders.

Decoding goes through pydicom's pixel backends, which own the DICOM side of
it (sign correction, YBR to RGB, planar configuration, bit depths). This
module adds one plugin, ``imagecodecs``, in pydicom's plugin shape
(``DECODER_DEPENDENCIES``, ``is_available``, one frame function), because
its libraries are several times faster than pylibjpeg's for the same
codestreams, measured on a 512x512 12-bit CT slice (``benchmarks/imaging.py``):

============  =========================  ==========================
syntax        pylibjpeg                  imagecodecs
============  =========================  ==========================
JPEG 2000     OpenJPEG, 1 thread ~24 ms  OpenJPEG, threaded ~14 ms
HTJ2K         OpenJPEG ~2.5 ms           OpenJPH ~1.3 ms
JPEG-LS       libjpeg ~18 ms             CharLS ~4.6 ms
JPEG lossless libjpeg ~8.7 ms            libjpeg-turbo ~2.0 ms
JPEG baseline libjpeg ~1.9 ms            libjpeg-turbo ~0.3 ms
============  =========================  ==========================

pylibjpeg stays as the fall-back: ``preferred_plugin`` names our plugin only
where it is known to give pydicom's own answer (colour JPEG is left to
pylibjpeg, whose colour handling pydicom is written around).

Encoders (``encode_frame``) turn one decoded frame into one codestream for
the compressed transfer syntaxes we write; ``pacs.pixels.transcode`` wraps
them into a data set.
"""

from __future__ import annotations

import functools
import os
import threading
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom import uid
from pydicom.pixels.common import PhotometricInterpretation as PI

_JPEG = (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
_JPEG_LS = (uid.JPEGLSLossless, uid.JPEGLSNearLossless)
_J2K = (uid.JPEG2000Lossless, uid.JPEG2000)
_HTJ2K = (uid.HTJ2KLossless, uid.HTJ2KLosslessRPCL, uid.HTJ2K)

DECODER_DEPENDENCIES = {
    syntax: ("imagecodecs>=2024.1.1",) for syntax in (*_JPEG, *_JPEG_LS, *_J2K, *_HTJ2K)
}
PLUGIN = "imagecodecs"
# Threads per JPEG 2000 decode: a viewer waits on one slice at a time.
_THREADS = max(1, min(4, os.cpu_count() or 1))


@functools.cache
def load_imagecodecs() -> Any | None:
    """The imagecodecs module, or ``None`` when it is not installed (imported once, lazily)."""
    try:
        import imagecodecs
    except ImportError:
        return None
    return imagecodecs


def is_available(syntax: str) -> bool:
    """pydicom's plugin hook: whether this plugin can decode ``syntax`` here."""
    codecs = load_imagecodecs()
    if codecs is None:
        return False
    if syntax in _JPEG:
        return bool(codecs.JPEG8.available)
    if syntax in _JPEG_LS:
        return bool(codecs.JPEGLS.available)
    if syntax in _J2K:
        return bool(codecs.JPEG2K.available)
    if syntax in _HTJ2K:
        return bool(codecs.HTJ2K.available or codecs.JPEG2K.available)
    return False


def can_decode(syntax: str) -> bool:
    """Whether ``decode_codestream`` reads ``syntax`` here (its library is installed)."""
    return is_available(syntax)


def decode_codestream(src: bytes, syntax: str) -> np.ndarray:
    """One frame's codestream to its samples as the library gives them: no
    DICOM corrections (sign, colour space), which are the caller's. Raises
    what the library raises on a corrupt codestream."""
    codecs = load_imagecodecs()
    assert codecs is not None and is_available(syntax)
    if syntax in _JPEG:
        return codecs.jpeg8_decode(src)  # type: ignore[no-any-return]
    if syntax in _JPEG_LS:
        return codecs.jpegls_decode(src)  # type: ignore[no-any-return]
    if syntax in _HTJ2K and codecs.HTJ2K.available:
        try:
            return codecs.htj2k_decode(src)  # type: ignore[no-any-return]
        except codecs.Htj2kError:
            pass  # OpenJPH reads only pure HT codestreams; OpenJPEG reads mixed ones too
    return codecs.jpeg2k_decode(src, numthreads=_THREADS)  # type: ignore[no-any-return]


def _decode_frame(src: bytes, runner: Any) -> bytes | bytearray:
    """pydicom's plugin hook: one codestream to raw samples, as pylibjpeg gives them."""
    codecs = load_imagecodecs()
    assert codecs is not None  # pydicom calls us only when is_available
    syntax = runner.transfer_syntax
    if syntax in _JPEG and runner.samples_per_pixel != 1:
        raise NotImplementedError("colour JPEG is left to pylibjpeg")
    array = decode_codestream(src, syntax)
    if syntax in _JPEG_LS:
        runner.set_option("planar_configuration", 0)  # CharLS interleaves samples
    # Both JPEG 2000 libraries undo the multiple-component transform.
    if syntax not in _JPEG + _JPEG_LS and runner.photometric_interpretation in (
        PI.YBR_ICT,
        PI.YBR_RCT,
    ):
        runner.set_option("photometric_interpretation", PI.RGB)
    if array.ndim == 3:
        runner.set_option("planar_configuration", 0)
    # The container follows the codestream's precision, as with pylibjpeg.
    runner.set_option("bits_allocated", 8 * array.dtype.itemsize)
    return bytes(array.tobytes())


_registered = False
_register_lock = threading.Lock()


def register() -> None:
    """Add the plugin to pydicom's decoders (once; pydicom's ``add_plugin`` is not thread-safe)."""
    global _registered
    if _registered:
        return
    with _register_lock:
        if _registered:
            return
        from pydicom.pixels.decoders.base import get_decoder

        for syntax in DECODER_DEPENDENCIES:
            decoder = get_decoder(syntax)
            if PLUGIN not in decoder.available_plugins:
                decoder.add_plugin(PLUGIN, (__name__, "_decode_frame"))
        _registered = True


def preferred_plugin(syntax: str, samples_per_pixel: int) -> str:
    """The ``decoding_plugin`` to ask pydicom for: ours where preferred, else ``""`` (any)."""
    if syntax in _JPEG and samples_per_pixel != 1:
        return ""
    if not is_available(syntax):
        return ""
    register()
    return PLUGIN


# -- encoding ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LossyQuality:
    """How hard lossy encoders compress (used only when a lossy syntax is asked for).

    Defaults are within what radiology guidelines accept for reading on
    screen (e.g. the Canadian Association of Radiologists: CT 8-15:1, CR/DX
    up to 20-30:1, JPEG quality about 85-95).
    """

    jpeg_quality: int = 90
    """libjpeg quality 1-100 for JPEG baseline/extended."""
    compression_ratio: float = 10.0
    """Target size ratio for JPEG 2000 and HTJ2K lossy."""
    jpegls_near: int = 2
    """Largest error per sample for JPEG-LS near-lossless."""


@dataclass(frozen=True, slots=True)
class FrameFormat:
    """What an encoder must know of the frames it gets (after decoding)."""

    bits_allocated: int
    bits_stored: int
    signed: bool
    samples_per_pixel: int
    photometric: str
    """``MONOCHROME1``, ``MONOCHROME2``, ``PALETTE COLOR`` or ``RGB``."""


LOSSLESS_ENCODINGS = frozenset(
    (
        uid.JPEGLossless,
        uid.JPEGLosslessSV1,
        uid.JPEGLSLossless,
        uid.JPEG2000Lossless,
        uid.HTJ2KLossless,
        uid.HTJ2KLosslessRPCL,
    )
)
LOSSY_ENCODINGS = frozenset(
    (uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLSNearLossless, uid.JPEG2000, uid.HTJ2K)
)
LOSSY_METHODS = {
    uid.JPEGBaseline8Bit: "ISO_10918_1",
    uid.JPEGExtended12Bit: "ISO_10918_1",
    uid.JPEGLSNearLossless: "ISO_14495_1",
    uid.JPEG2000: "ISO_15444_1",
    uid.HTJ2K: "ISO_15444_15",
}
"""PS3.3 C.7.6.1.1.5.1: Lossy Image Compression Method, per syntax."""


def can_encode(syntax: str) -> bool:
    """Whether the library that writes ``syntax`` is installed."""
    codecs = load_imagecodecs()
    if codecs is None:
        return False
    if syntax == uid.JPEG2000:
        try:
            import openjpeg.utils  # noqa: F401
        except ImportError:
            return False
    if syntax in _J2K:
        return bool(codecs.JPEG2K.available)
    if syntax in _JPEG:
        return bool(codecs.JPEG8.available)
    if syntax in _JPEG_LS:
        return bool(codecs.JPEGLS.available)
    if syntax in _HTJ2K:
        return bool(codecs.HTJ2K.available)
    return False


def refusal(syntax: str, fmt: FrameFormat) -> str | None:
    """Why frames of ``fmt`` cannot be written as ``syntax``, or ``None`` when they can.

    Known before any pixel is decoded, so that a response that has started
    never fails half-way.
    """
    if syntax not in LOSSLESS_ENCODINGS and syntax not in LOSSY_ENCODINGS:
        return f"{uid.UID(syntax).name} is not a syntax we encode"
    if not can_encode(syntax):
        package = "pylibjpeg-openjpeg" if syntax == uid.JPEG2000 else "imagecodecs"
        return f"writing {uid.UID(syntax).name} needs {package}, which is not installed"
    if fmt.bits_allocated not in (8, 16) or fmt.samples_per_pixel not in (1, 3):
        return (
            f"{fmt.bits_allocated}-bit, {fmt.samples_per_pixel}-sample images"
            " are not written compressed"
        )
    if syntax in LOSSY_ENCODINGS and fmt.photometric == "PALETTE COLOR":
        return "palette indices cannot be compressed lossily"
    if syntax == uid.JPEGBaseline8Bit and (fmt.bits_stored > 8 or fmt.signed):
        return "JPEG baseline holds unsigned 8-bit samples only"
    if syntax == uid.JPEGExtended12Bit and (fmt.bits_stored > 12 or fmt.signed):
        return "JPEG extended holds unsigned samples of up to 12 bits only"
    return None


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    codestream: bytes
    photometric: str
    """Photometric Interpretation of the encoded frame (PS3.5 8.2)."""
    lossy: bool
    """False when a lossy syntax was given a reversible codestream (tiny images)."""


# Below this many pixels a side, a size ratio means nothing and the wavelet
# has too few levels: JPEG 2000 and HTJ2K lossy syntaxes get a reversible
# codestream, which both syntaxes allow (PS3.5 A.4.4, A.4.6).
_TINY = 64


def encode_frame(
    frame: np.ndarray, syntax: str, fmt: FrameFormat, quality: LossyQuality
) -> EncodedFrame:
    """One frame (rows, columns[, samples], in stored values or RGB) as a codestream.

    Call ``refusal`` first.
    """
    codecs = load_imagecodecs()
    assert codecs is not None
    colour = fmt.samples_per_pixel == 3
    photometric = fmt.photometric
    if syntax in _JPEG:
        if syntax in (uid.JPEGLossless, uid.JPEGLosslessSV1):
            bits = _lossless_precision(frame, fmt)
            data = codecs.jpeg8_encode(
                _unsigned(frame, bits),
                lossless=True,
                predictor=1,
                bitspersample=bits,
                colorspace="RGB" if colour else None,
                outcolorspace="RGB" if colour else None,
            )
        else:
            bits = 8 if fmt.bits_allocated == 8 else 12
            data = codecs.jpeg8_encode(
                _unsigned(frame, min(bits, fmt.bits_stored)),  # bits above High Bit are not data
                level=quality.jpeg_quality,
                bitspersample=bits,
                subsampling="422" if colour else None,
            )
            if colour:
                photometric = "YBR_FULL_422"  # PS3.5 8.2.1
    elif syntax in _JPEG_LS:
        bits = _lossless_precision(frame, fmt)
        near = quality.jpegls_near if syntax == uid.JPEGLSNearLossless else 0
        data = codecs.jpegls_encode(_unsigned(frame, bits), level=near)
    else:
        lossless = syntax not in LOSSY_ENCODINGS or min(frame.shape[:2]) < _TINY
        if syntax in _J2K:
            data = _j2k(codecs, frame, fmt, lossless, quality.compression_ratio)
        else:
            data = _htj2k(codecs, frame, syntax, lossless, quality.compression_ratio)
        if colour:
            photometric = "YBR_RCT" if lossless else "YBR_ICT"  # PS3.5 8.2.4
        return EncodedFrame(bytes(data), photometric, not lossless)
    return EncodedFrame(bytes(data), photometric, syntax in LOSSY_ENCODINGS)


def decoded_crc32(frame: np.ndarray, codestream: bytes) -> int | None:
    """CRC-32 of the samples a lossless JPEG 2000 or HTJ2K ``codestream`` of
    ``frame`` decodes to, laid out as decoders write them (OpenJPH, OpenJPEG):
    one byte a sample up to 8 bits of precision (its SIZ marker), two
    little-endian bytes up to 16, colour interleaved; ``None`` for any other
    codestream.

    A client checks its decoder's output against it. A codestream spoiled on
    the way, or a decoder's fault, then shows as a mismatch instead of as
    plausible pixels: an HTJ2K codestream cut short or altered decodes without
    an error to values a few units off.
    """
    # SOC, SIZ, then Lsiz Rsiz Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz
    # Csiz (38 bytes) and the first component's Ssiz (PS3.5 refers to ISO 15444-1 A.5.1).
    if len(codestream) < 43 or codestream[:4] != b"\xff\x4f\xff\x51":
        return None
    precision = (codestream[42] & 0x7F) + 1
    if precision > 16:
        return None
    kind = "i" if codestream[42] & 0x80 else "u"
    samples = np.ascontiguousarray(frame, dtype=f"<{kind}{1 if precision <= 8 else 2}")
    return zlib.crc32(samples.data)


def _lossless_precision(frame: np.ndarray, fmt: FrameFormat) -> int:
    """The sample precision for JPEG lossless and JPEG-LS, which code unsigned patterns.

    Bits Stored when every value is a non-negative number within it (for a
    signed image, within its positive half, so that a decoder's sign
    extension changes nothing). Otherwise (negative values, stray high bits)
    every allocated bit is kept: the frame decodes to exactly what it was,
    and JPEG-LS near-lossless errors stay near, since pattern space is
    clamped at its ends, never wrapped.
    """
    stored = max(2, fmt.bits_stored)
    if stored >= fmt.bits_allocated or not frame.size:
        return fmt.bits_allocated
    limit = 1 << (stored - 1 if fmt.signed else stored)
    return stored if int(frame.min()) >= 0 and int(frame.max()) < limit else fmt.bits_allocated


def _unsigned(frame: np.ndarray, bits: int) -> np.ndarray:
    """The frame's values as unsigned ``bits``-bit patterns (two's complement for negatives)."""
    if frame.dtype.kind == "u":
        return frame
    unsigned = frame.view(frame.dtype.str.replace("i", "u"))
    if bits < 8 * frame.dtype.itemsize:
        unsigned = unsigned & ((1 << bits) - 1)
    return unsigned


def _j2k(codecs: Any, frame: np.ndarray, fmt: FrameFormat, lossless: bool, ratio: float) -> bytes:
    colour = fmt.samples_per_pixel == 3
    if lossless:
        return bytes(
            codecs.jpeg2k_encode(
                frame,
                level=0,
                codecformat="J2K",
                reversible=True,
                bitspersample=max(fmt.bits_stored, 2),
                resolutions=min(6, int(np.log2(min(frame.shape[:2]))) + 1),
                mct=colour,
                numthreads=_THREADS,
            )
        )
    # Lossy: pylibjpeg's OpenJPEG encoder, because it has OpenJPEG's rate
    # control (a size ratio in one pass); imagecodecs' takes a quality in dB.
    from openjpeg.utils import encode_array

    return bytes(
        encode_array(
            np.ascontiguousarray(frame),
            bits_stored=max(fmt.bits_stored, 1),
            photometric_interpretation=1 if colour else 2,
            use_mct=colour,
            compression_ratios=[ratio],
        )
    )


def _htj2k(codecs: Any, frame: np.ndarray, syntax: str, lossless: bool, ratio: float) -> bytes:
    colour = frame.ndim == 3
    options: dict[str, Any] = {"rgb": colour or None}
    if syntax == uid.HTJ2KLosslessRPCL:
        # PS3.5 A.4.7: RPCL progression (OpenJPH's default), with TLM markers
        # and tile-parts by resolution, so a client can fetch low resolutions first.
        options.update(tlm=True, tilepart=codecs.HTJ2K.TILEPART.RESOLUTIONS)
    if lossless:
        return bytes(codecs.htj2k_encode(frame, reversible=True, **options))
    # OpenJPH takes a quantisation step: search the step that gives the ratio.
    return _search_quality(
        lambda step: codecs.htj2k_encode(frame, level=step, reversible=False, **options),
        frame.nbytes / ratio,
        low=1e-5,
        high=0.5,
        larger_is_bigger=False,
    )


def _search_quality(
    encode: Any,
    target_size: float,
    *,
    low: float,
    high: float,
    larger_is_bigger: bool,
    steps: int = 7,
) -> bytes:
    """Bisect (geometrically) an encoder's knob for the largest output within ``target_size``.

    Seven halvings put the size within a few per cent of the target; the
    smallest output is returned when even the lowest quality is too large.
    """
    best: bytes | None = None
    lowest_quality = low if larger_is_bigger else high
    for _ in range(steps):
        middle = (low * high) ** 0.5
        data = bytes(encode(middle))
        fits = len(data) <= target_size
        if fits and (best is None or len(data) > len(best)):
            best = data
        # Move towards higher quality when it fits, lower when it does not.
        if fits == larger_is_bigger:
            low = middle
        else:
            high = middle
    return best if best is not None else bytes(encode(lowest_quality))
