"""Safe loading of untrusted image uploads into plain RGB PIL images.

Everything goes through :func:`load_image`, which refuses oversized files,
formats outside an allowlist and decompression bombs *before* decoding, and
turns every failure into an :class:`ImageLoadError` whose message is a single
sentence fit to show to the person who uploaded the file.

Pillow's global settings (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``) are never modified.
"""

from __future__ import annotations

import io
import os
import re
import stat
import struct
import threading
import warnings
from dataclasses import dataclass, field
from typing import IO, NoReturn, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageLimits", "ImageLoadError", "load_image"]

ImageSource = Union[
    str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], Image.Image
]


class ImageLoadError(ValueError):
    """An upload that cannot be turned into an image; ``str()`` is one sentence.

    ``reason`` is a short machine-readable code (``"missing"``, ``"not_a_file"``,
    ``"unreadable"``, ``"empty"``, ``"too_large"``, ``"not_image"``,
    ``"format"``, ``"pixels"``, ``"corrupt"``, ``"mode"``, ``"no_input"``) and
    ``filename`` the base name of the offending file, when there was one.
    """

    def __init__(self, message: str, *, reason: str, filename: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.filename = filename


@dataclass(frozen=True)
class ImageLimits:
    """What :func:`load_image` accepts. ``formats`` are Pillow format names.

    MPO is how Pillow reports many phone JPEGs (a JPEG with extra frames).
    Pillow's own bomb threshold (``Image.MAX_IMAGE_PIXELS``, about 89 MP by
    default) still applies on top of ``max_pixels``.
    """

    max_bytes: int = 50 * 2**20
    max_pixels: int = 40_000_000
    formats: frozenset = field(
        default=frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"})
    )

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_pixels <= 0:
            raise ValueError("max_bytes and max_pixels must be positive")
        object.__setattr__(self, "formats", frozenset(f.upper() for f in self.formats))


# Serialises our warnings.catch_warnings() blocks: catch_warnings swaps the
# process-wide filter list, and two threads restoring it out of order could
# leave our temporary "error" filter installed for good.
_WARNINGS_LOCK = threading.Lock()

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_WIDE_MODES = _SIXTEEN_BIT_MODES | {"I", "F"}

# Display names, in the order they are suggested to the user.
_FORMAT_NAMES = {
    "JPEG": "JPEG", "PNG": "PNG", "WEBP": "WebP", "GIF": "GIF", "BMP": "BMP", "TIFF": "TIFF"
}

# Leading bytes of documents people upload by mistake (lower-cased, after BOM
# and whitespace are stripped).
_DOCUMENT_SIGNATURES = (
    (b"<svg", "SVG"),
    (b"<?xml", "SVG/XML"),
    (b"<!doctype svg", "SVG"),
    (b"<!doctype html", "HTML"),
    (b"<html", "HTML"),
    (b"<head", "HTML"),
    (b"<body", "HTML"),
    (b"%pdf", "PDF"),
    (b"%!ps", "PostScript"),
    (b"{", "JSON"),
)

# Little-endian DIB header sizes that follow a BMP's 14-byte file header.
_BMP_HEADER_SIZES = {struct.pack("<I", n) for n in (12, 16, 40, 52, 56, 64, 108, 124)}

# ISO-BMFF brands ("....ftypXXXX") mapped to a format name.
_FTYP_BRANDS = {
    b"heic": "HEIC", b"heix": "HEIC", b"heim": "HEIC", b"heis": "HEIC",
    b"hevc": "HEIC", b"hevx": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF",
    b"avif": "AVIF", b"avis": "AVIF", b"jxl ": "JPEG XL",
    b"isom": "MP4 video", b"mp41": "MP4 video", b"mp42": "MP4 video",
    b"qt  ": "QuickTime video", b"M4V ": "MP4 video",
}


def load_image(source: ImageSource, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """Return ``source`` as a fully decoded, detached image in mode ``"RGB"``.

    ``source`` may be a path, raw bytes, a binary file object (read from its
    start) or a PIL image. Files are size-checked before reading, format and
    pixel count are checked from the header before decoding, only the first
    frame of animations is kept, EXIF orientation is applied (broken EXIF is
    ignored), transparency is flattened onto white, wide-range images are
    rescaled into 0..255 and metadata (EXIF, ICC, text chunks) is dropped.

    Raises :class:`ImageLoadError` for anything the uploader can fix, and
    ``TypeError`` for a source of an unsupported Python type.
    """
    if source is None:
        raise ImageLoadError("No image was provided.", reason="no_input")
    if isinstance(source, Image.Image):
        return _from_pil(source, limits)
    data, name = _read_source(source, limits)
    return _decode(data, name, limits)


# -- reading -----------------------------------------------------------------


def _read_source(source: object, limits: ImageLimits) -> tuple[bytes, str | None]:
    """Read the raw bytes of a path, bytes-like or file object, enforcing max_bytes."""
    if isinstance(source, (str, os.PathLike)):
        return _read_path(source, limits)
    if isinstance(source, (bytes, bytearray, memoryview)):
        size = source.nbytes if isinstance(source, memoryview) else len(source)
        _check_byte_count(size, limits, None)
        return bytes(source), None
    if callable(getattr(source, "read", None)):
        name = getattr(source, "name", None)
        name = _display_name(name) if isinstance(name, (str, os.PathLike)) else None
        try:
            if source.seekable():  # type: ignore[attr-defined]
                source.seek(0)  # type: ignore[attr-defined]
        except (AttributeError, OSError, ValueError):
            pass
        try:
            data = source.read(limits.max_bytes + 1)  # type: ignore[attr-defined]
        except (OSError, ValueError) as exc:
            detail = _clean(str(exc)) or type(exc).__name__
            _fail("unreadable", f"The file cannot be read ({detail}).", name)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError("load_image() needs a binary file object (opened with 'rb')")
        data = bytes(data)
        if len(data) > limits.max_bytes:
            limit = _megabytes(limits.max_bytes)
            _fail("too_large", f"The file is larger than the {limit} limit.", name)
        _check_byte_count(len(data), limits, name)
        return data, name
    raise TypeError(
        "load_image() takes a path, bytes, a binary file object or a PIL image, "
        f"not {type(source).__name__}"
    )


def _read_path(path: str | os.PathLike, limits: ImageLimits) -> tuple[bytes, str | None]:
    """Stat then read a file, refusing non-regular and oversized files before reading."""
    name = _display_name(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        missing = "This is a link to a file that does not exist." if os.path.islink(path) else "The file does not exist."
        _fail("missing", missing, name)
    except PermissionError:
        _fail("unreadable", "The file cannot be read (permission denied).", name)
    except (OSError, ValueError) as exc:  # ValueError: embedded NUL in the path
        _fail("unreadable", f"The file cannot be read ({_os_reason(exc)}).", name)
    if stat.S_ISDIR(info.st_mode):
        _fail("not_a_file", "This is a folder, not an image file.", name)
    if not stat.S_ISREG(info.st_mode):
        _fail("not_a_file", "This is not a regular file.", name)
    _check_byte_count(info.st_size, limits, name)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limits.max_bytes + 1)  # the file may have grown since stat()
    except PermissionError:
        _fail("unreadable", "The file cannot be read (permission denied).", name)
    except OSError as exc:
        _fail("unreadable", f"The file cannot be read ({_os_reason(exc)}).", name)
    _check_byte_count(len(data), limits, name)
    return data, name


def _check_byte_count(size: int, limits: ImageLimits, name: str | None) -> None:
    if size == 0:
        _fail("empty", "The file is empty (0 bytes).", name)
    if size > limits.max_bytes:
        _fail(
            "too_large",
            f"The file is {_megabytes(size)}, above the {_megabytes(limits.max_bytes)} limit.",
            name,
        )


# -- decoding ----------------------------------------------------------------


def _decode(data: bytes, name: str | None, limits: ImageLimits) -> Image.Image:
    """Identify, vet and decode image bytes; everything Pillow raises becomes ImageLoadError."""
    head = data[:1024]
    document = _sniff_document(head)
    if document:
        _fail_not_image(document, name, limits)

    allowed = limits.formats
    # Pillow has no separate opener for MPO: the JPEG opener returns MPO images.
    candidates = allowed | ({"JPEG"} if "MPO" in allowed else set())
    Image.init()
    open_formats = [f for f in _ordered(candidates) if f in Image.OPEN]

    try:
        with _WARNINGS_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=open_formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        _fail_bomb(exc, name, limits)
    except UnidentifiedImageError:
        _fail_unidentified(head, name, limits)
    except MemoryError:
        _fail("pixels", "The image is too large to open.", name)
    except Exception as exc:  # Pillow raises many types for malformed headers
        if _sniff_image_format(head) is None:  # e.g. text that happens to start with "BM"
            _fail_unidentified(head, name, limits)
        _fail_corrupt(exc, name)

    with im:
        fmt = (im.format or "").upper()
        if fmt not in allowed:
            _fail_format(fmt or "unknown", name, limits)
        _check_pixels(im.size, name, limits)
        try:
            im.load()  # first frame only: Image.open leaves animations on frame 0
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            _fail_bomb(exc, name, limits)
        except MemoryError:
            _fail("pixels", "The image is too large to decode.", name)
        except Exception as exc:
            _fail_corrupt(exc, name)
        return _finish(im, name)


def _from_pil(im: Image.Image, limits: ImageLimits) -> Image.Image:
    """Apply the pixel limit and normalisation to a caller's image without altering it."""
    name = _display_name(im.filename) if getattr(im, "filename", None) else None
    _check_pixels(im.size, name, limits)
    try:
        im.load()  # a lazily opened ImageFile decodes here
    except MemoryError:
        _fail("pixels", "The image is too large to decode.", name)
    except Exception as exc:
        _fail_corrupt(exc, name)
    return _finish(im, name)


def _finish(im: Image.Image, name: str | None) -> Image.Image:
    """Orient, convert to RGB and return a new image sharing nothing with ``im``."""
    oriented = _exif_transpose(im)
    try:
        rgb = _to_rgb(oriented)
    except (ValueError, OSError) as exc:
        sentence = f"The image's colour mode {im.mode} cannot be converted to RGB."
        _fail("mode", sentence, name, exc)
    if rgb is im:
        rgb = im.copy()
    rgb.info = {}
    return rgb


def _exif_transpose(im: Image.Image) -> Image.Image:
    """Apply the EXIF Orientation tag; unreadable EXIF leaves the image as it is."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB, flattening transparency onto white."""
    if im.mode in _WIDE_MODES:
        return _wide_to_grey(im).convert("RGB")
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if im.mode == "RGB":
        return im.copy()
    # CMYK (Pillow already undoes Adobe's inverted CMYK while decoding), L, 1,
    # P, YCbCr, LAB, HSV, RGBX.
    return im.convert("RGB")


def _has_alpha(im: Image.Image) -> bool:
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        return True
    palette = im.palette if im.mode == "P" else None
    return palette is not None and palette.mode == "RGBA"


def _wide_to_grey(im: Image.Image) -> Image.Image:
    """Map 16/32-bit integer and float images onto 0..255 without saturating.

    16-bit modes (and ``"I"`` whose values fit in 0..65535) are divided by
    65535; floats inside 0..1 are multiplied by 255; anything else is
    stretched over its actual finite range (a constant image becomes black).
    """
    a = np.asarray(im)
    if im.mode in _SIXTEEN_BIT_MODES:
        scaled = (a.astype(np.uint32) * 255 + 32767) // 65535
        return Image.fromarray(scaled.astype(np.uint8))
    values = a.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return Image.new("L", im.size, 0)
    lo = float(values[finite].min())
    hi = float(values[finite].max())
    if im.mode == "I" and lo >= 0 and hi <= 65535:
        lo, hi = 0.0, 65535.0
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        lo, hi = 0.0, 1.0
    span = hi - lo
    if span > 0:
        values = (values - lo) * np.float32(255.0 / span)
    else:
        values = np.zeros_like(values)
    values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.rint(np.clip(values, 0, 255)).astype(np.uint8))


# -- classification of failures -------------------------------------------------


def _check_pixels(size: tuple[int, int], name: str | None, limits: ImageLimits) -> None:
    width, height = size
    pixels = width * height
    if pixels > limits.max_pixels:
        _fail(
            "pixels",
            f"The image is {width}x{height} = {_megapixels(pixels)} megapixels, "
            f"above the {_megapixels(limits.max_pixels)} megapixel limit.",
            name,
        )


def _fail_bomb(exc: BaseException, name: str | None, limits: ImageLimits) -> NoReturn:
    """Pillow's own bomb check fired; its message carries the pixel count only."""
    limit = limits.max_pixels
    if Image.MAX_IMAGE_PIXELS:
        limit = min(limit, Image.MAX_IMAGE_PIXELS)
    match = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{_megapixels(int(match.group(1)))} megapixels" if match else "too many pixels"
    sentence = f"The image is {size}, above the {_megapixels(limit)} megapixel limit."
    _fail("pixels", sentence, name, exc)


def _fail_unidentified(head: bytes, name: str | None, limits: ImageLimits) -> NoReturn:
    fmt = _sniff_image_format(head)
    if fmt is not None:
        if fmt in limits.formats or (fmt == "JPEG" and "MPO" in limits.formats):
            sentence = "The image file is truncated or corrupt: its header cannot be parsed."
            _fail("corrupt", sentence, name)
        _fail_format(fmt, name, limits)
    _fail_not_image("text" if _looks_like_text(head) else None, name, limits)


def _fail_format(fmt: str, name: str | None, limits: ImageLimits) -> NoReturn:
    shown = _FORMAT_NAMES.get(fmt, fmt)
    _fail("format", f"{shown} files are not supported here; upload a {_accepted(limits)}.", name)


def _fail_not_image(kind: str | None, name: str | None, limits: ImageLimits) -> NoReturn:
    looks = f" (it looks like {kind})" if kind else ""
    sentence = f"This is not an image Pillow can read{looks}; upload a {_accepted(limits)}."
    _fail("not_image", sentence, name)


def _fail_corrupt(exc: BaseException, name: str | None) -> NoReturn:
    detail = _clean(str(exc)) or type(exc).__name__
    _fail("corrupt", f"The image file is truncated or corrupt: {detail}.", name, exc)


def _fail(
    reason: str, sentence: str, name: str | None, cause: BaseException | None = None
) -> NoReturn:
    """Raise ImageLoadError; the Pillow exception stays as ``__cause__`` for logs only."""
    message = f"{name}: {sentence}" if name else sentence
    raise ImageLoadError(message, reason=reason, filename=name) from cause


def _sniff_document(head: bytes) -> str | None:
    """Name the non-image document type ``head`` starts with, if it is a known one."""
    text = _strip_bom(head).lstrip().lower()
    for signature, kind in _DOCUMENT_SIGNATURES:
        if text.startswith(signature):
            if kind == "SVG/XML" and b"<svg" in text:
                return "SVG"
            return kind
    if text.startswith(b"<!--") and b"<svg" in text:
        return "SVG"
    return None


def _sniff_image_format(head: bytes) -> str | None:
    """Guess a well-known image format from magic bytes, for error messages only."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head.startswith(b"BM") and head[14:18] in _BMP_HEADER_SIZES:
        return "BMP"
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "ISO media (HEIC/AVIF/MP4)")
    if head.startswith(b"\x00\x00\x00\x0cjP  ") or head.startswith(b"\xffO\xffQ"):
        return "JPEG 2000"
    if head.startswith(b"\x00\x00\x00\x0cJXL ") or head.startswith(b"\xff\x0a"):
        return "JPEG XL"
    if head.startswith(b"8BPS"):
        return "Photoshop (PSD)"
    if head.startswith(b"\x00\x00\x01\x00") or head.startswith(b"\x00\x00\x02\x00"):
        return "ICO"
    if head.startswith(b"qoif"):
        return "QOI"
    if head.startswith(b"DDS "):
        return "DDS"
    return None


def _looks_like_text(head: bytes) -> bool:
    """True when ``head`` is NUL-free UTF-8 made almost entirely of printable characters."""
    if not head or b"\x00" in head:
        return False
    text = _strip_bom(head).decode("utf-8", errors="ignore")
    if len(text) < len(head) // 2:
        return False
    printable = sum(ch.isprintable() or ch in "\t\r\n" for ch in text)
    return printable >= 0.95 * len(text)


def _strip_bom(head: bytes) -> bytes:
    return head[3:] if head.startswith(b"\xef\xbb\xbf") else head


# -- formatting --------------------------------------------------------------


def _ordered(formats: frozenset | set) -> list[str]:
    preferred = [f for f in _FORMAT_NAMES if f in formats]
    return preferred + sorted(f for f in formats if f not in _FORMAT_NAMES)


def _accepted(limits: ImageLimits) -> str:
    names: list[str] = []
    for fmt in _ordered(limits.formats):
        shown = "JPEG" if fmt == "MPO" else _FORMAT_NAMES.get(fmt, fmt)
        if shown not in names:
            names.append(shown)
    if not names:
        return "supported image"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _megabytes(size: int) -> str:
    """Human size: bytes below 1 KB, KB below 1 MB, MB above (binary units)."""
    if size < 2**10:
        return f"{size} bytes"
    unit, value = ("KB", size / 2**10) if size < 2**20 else ("MB", size / 2**20)
    return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"


def _megapixels(pixels: int) -> str:
    value = pixels / 1e6
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.1f}"


def _display_name(path: object) -> str:
    """Base name of ``path``, with characters unsafe in a UI message replaced."""
    try:
        text = os.fsdecode(path)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        text = str(path)
    return _clean(os.path.basename(text.rstrip("/\\")) or text, limit=120)


def _clean(text: str, limit: int = 200) -> str:
    """One printable line without markup characters, truncated to ``limit``."""
    text = " ".join(text.split())
    text = "".join(ch if ch.isprintable() and ch not in "<>&`" else "_" for ch in text)
    text = text.rstrip(".")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _os_reason(exc: BaseException) -> str:
    return _clean(getattr(exc, "strerror", None) or type(exc).__name__)
