"""Tests for kosmos_demo.images.load_image. Every fixture is generated here."""

from __future__ import annotations

import io
import struct
import threading
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps

from kosmos_demo import images
from kosmos_demo.images import ImageLimits, ImageLoadError, load_image

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)


# -- helpers -------------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def handmade_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes) -> bytes:
    """A PNG written chunk by chunk; ``rows`` is the unfiltered scanline data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(rows))
        + png_chunk(b"IEND", b"")
    )


def png_from_array(a: np.ndarray, color_type: int) -> bytes:
    """Encode a big-endian uint16 array (H, W[, C]) as a 16-bit PNG by hand."""
    a = a.astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in a)
    return handmade_png(a.shape[1], a.shape[0], 16, color_type, rows)


def two_colour(size=(16, 12)) -> Image.Image:
    """Left half red, right half blue."""
    im = Image.new("RGB", size, RED)
    im.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return im


def noisy(size=(96, 64), seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def close(actual, expected, tol=12) -> bool:
    return all(abs(a - e) <= tol for a, e in zip(actual, expected))


def expect_error(
    source, reason: str, *words: str, limits: ImageLimits | None = None
) -> ImageLoadError:
    """Load ``source`` expecting failure; check the message is one clean sentence."""
    with pytest.raises(ImageLoadError) as info:
        if limits is None:
            load_image(source)
        else:
            load_image(source, limits)
    err = info.value
    message = str(err)
    assert err.reason == reason, message
    assert isinstance(err, ValueError)
    for word in words:
        assert word.lower() in message.lower(), message
    assert "\n" not in message and "Traceback" not in message, message
    assert "object at 0x" not in message and "<" not in message, message
    assert message.endswith("."), message
    return err


@pytest.fixture
def pillow_state():
    """Fail a test that leaves Pillow's globals or the warning filters changed."""
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    yield
    after = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES, list(warnings.filters))
    assert after == before


# -- round trips and input kinds ---------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params", "tol"),
    [
        ("JPEG", {"quality": 95}, 40),
        ("PNG", {}, 0),
        ("WEBP", {"lossless": True}, 0),
        ("WEBP", {"quality": 90}, 40),
        ("GIF", {}, 0),
        ("BMP", {}, 0),
        ("TIFF", {}, 0),
    ],
    ids=["jpeg", "png", "webp-lossless", "webp-lossy", "gif", "bmp", "tiff"],
)
def test_round_trip_formats(tmp_path, fmt, params, tol):
    path = tmp_path / f"pic.{fmt.lower()}"
    path.write_bytes(encode(two_colour(), fmt, **params))
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.size == (16, 12)
    assert close(out.getpixel((2, 6)), RED, tol)
    assert close(out.getpixel((13, 6)), BLUE, tol)


@pytest.mark.parametrize(
    "wrap",
    [
        str,
        Path,
        lambda p: p.read_bytes(),
        lambda p: bytearray(p.read_bytes()),
        lambda p: memoryview(p.read_bytes()),
        lambda p: io.BytesIO(p.read_bytes()),
        lambda p: open(p, "rb"),  # noqa: SIM115 - closed below
    ],
    ids=["str", "pathlib", "bytes", "bytearray", "memoryview", "bytesio", "file"],
)
def test_source_kinds(tmp_path, wrap):
    path = tmp_path / "pic.png"
    path.write_bytes(encode(two_colour(), "PNG"))
    source = wrap(path)
    try:
        out = load_image(source)
    finally:
        if hasattr(source, "close"):
            source.close()
    assert out.mode == "RGB" and out.size == (16, 12)
    assert out.getpixel((0, 0)) == RED and out.getpixel((15, 11)) == BLUE


def test_bytesio_is_read_from_its_start():
    buf = io.BytesIO()
    two_colour().save(buf, "PNG")  # leaves the position at the end
    assert load_image(buf).getpixel((0, 0)) == RED


def test_result_is_detached_plain_rgb(tmp_path):
    path = tmp_path / "pic.jpg"
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    path.write_bytes(encode(two_colour(), "JPEG", exif=exif.tobytes(), icc_profile=b"fake"))
    out = load_image(path)
    path.unlink()  # nothing may still read from the file
    assert type(out) is Image.Image
    assert not isinstance(out, ImageFile.ImageFile)
    assert getattr(out, "fp", None) is None
    assert out.mode == "RGB"
    assert out.info == {}  # EXIF/ICC metadata is dropped
    assert np.asarray(out).shape == (12, 16, 3)


@pytest.mark.parametrize("size", [(1, 1), (20000, 20), (20, 20000)])
def test_degenerate_sizes_load(size):
    out = load_image(encode(Image.new("RGB", size, GREEN), "PNG"))
    assert out.size == size
    assert out.getpixel((size[0] - 1, size[1] - 1)) == GREEN


def test_mpo_phone_jpeg_uses_first_frame():
    data = encode(Image.new("RGB", (8, 8), RED), "MPO", save_all=True,
                  append_images=[Image.new("RGB", (8, 8), BLUE)])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    out = load_image(data)
    assert close(out.getpixel((4, 4)), RED, 10)


# -- empty, missing, oversized ------------------------------------------------------


def test_empty_file(tmp_path):
    path = tmp_path / "blank.png"
    path.write_bytes(b"")
    err = expect_error(path, "empty", "empty (0 bytes)", "blank.png")
    assert err.filename == "blank.png"


@pytest.mark.parametrize(
    "source", [b"", bytearray(), io.BytesIO()], ids=["bytes", "bytearray", "bytesio"]
)
def test_zero_bytes(source):
    expect_error(source, "empty", "empty (0 bytes)")


def test_missing_path(tmp_path):
    expect_error(tmp_path / "nope.jpg", "missing", "does not exist", "nope.jpg")


def test_directory(tmp_path):
    folder = tmp_path / "album"
    folder.mkdir()
    expect_error(str(folder), "not_a_file", "folder", "album")


def test_path_over_max_bytes_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(encode(noisy(), "PNG"))
    assert path.stat().st_size > 2048
    opened = []
    monkeypatch.setattr(images, "open", lambda *a, **k: opened.append(a), raising=False)
    limits = ImageLimits(max_bytes=2048)
    expect_error(path, "too_large", "above the 2 KB limit", "big.png", limits=limits)
    assert opened == []


@pytest.mark.parametrize(
    "wrap", [bytes, bytearray, io.BytesIO], ids=["bytes", "bytearray", "bytesio"]
)
def test_data_over_max_bytes(wrap):
    data = wrap(encode(noisy(), "PNG"))
    expect_error(data, "too_large", "2 KB limit", limits=ImageLimits(max_bytes=2048))


def test_none_and_wrong_types():
    expect_error(None, "no_input", "no image")
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        load_image(io.StringIO("text"))  # type: ignore[arg-type]


def test_file_name_with_markup_is_neutralised(tmp_path):
    path = tmp_path / "<img src=x onerror=alert(1)>.png"
    path.write_bytes(b"")
    err = expect_error(path, "empty", "empty")
    assert "img src=x" in str(err)


# -- not images, wrong formats ---------------------------------------------------------


def test_text_file_named_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("Shopping list:\n- eggs\n- milk\n")
    expect_error(
        path, "not_image", "not an image", "looks like text", "notes.png",
        "JPEG, PNG, WebP, GIF, BMP or TIFF",
    )


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b"<!-- Generator: Illustrator -->\n<svg></svg>", "SVG"),
        (b"\xef\xbb\xbf  <!DOCTYPE html><html><body>hi</body></html>", "HTML"),
        (b"<html><head><title>x</title></head></html>", "HTML"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
    ],
    ids=["svg", "xml-svg", "comment-svg", "bom-doctype-html", "html", "pdf"],
)
def test_documents_get_specific_message(tmp_path, content, kind):
    path = tmp_path / "upload.jpg"
    path.write_bytes(content)
    expect_error(path, "not_image", f"looks like {kind}", "upload.jpg")


def test_random_binary_is_not_an_image():
    data = bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8))
    err = expect_error(data, "not_image", "not an image")
    assert "looks like" not in str(err)


def test_format_outside_allowlist():
    data = encode(two_colour(), "JPEG")
    limits = ImageLimits(formats=frozenset({"png"}))
    expect_error(data, "format", "JPEG files are not supported", "upload a PNG.", limits=limits)


@pytest.mark.parametrize(
    ("make", "reason", "words"),
    [
        (lambda: encode(Image.new("RGB", (16, 16), RED), "ICO"), "format",
         ("ICO files are not supported",)),
        (lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, "format",
         ("HEIC files are not supported", "upload a JPEG")),
        (lambda: encode(Image.new("RGB", (8, 8), RED), "PPM"), "not_image", ("not an image",)),
    ],
    ids=["ico", "heic", "ppm"],
)
def test_formats_outside_default_allowlist_are_refused(make, reason, words):
    expect_error(make(), reason, *words)


# -- truncated and corrupt -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF"])
def test_truncated_files(tmp_path, fmt, pillow_state):
    data = encode(noisy(), fmt)
    path = tmp_path / f"half.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "corrupt", "truncated or corrupt", "half.")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_header_only_files(fmt):
    data = encode(noisy(), fmt)
    expect_error(data[:40], "corrupt", "truncated or corrupt")


def test_png_with_bad_crc_is_corrupt():
    data = bytearray(encode(two_colour(), "PNG"))
    data[29] ^= 0xFF  # inside IHDR's CRC
    expect_error(bytes(data), "corrupt", "truncated or corrupt")


@pytest.mark.parametrize("chunk", [b"zTXt", b"iCCP"])
def test_png_metadata_bomb_is_rejected_quickly(chunk):
    # 50 MB of zeros deflated into ~50 KB inside a text/ICC chunk.
    payload = b"Comment\x00\x00" + zlib.compress(b"\x00" * (50 * 2**20), 9)
    good = encode(two_colour(), "PNG")
    data = good[:33] + png_chunk(chunk, payload) + good[33:]  # right after IHDR
    start = time.perf_counter()
    expect_error(data, "corrupt", "truncated or corrupt")
    assert time.perf_counter() - start < 1.0


def test_text_starting_like_a_bmp_is_text():
    expect_error(b"BMW owners club newsletter, issue 4\n", "not_image", "looks like text")


# -- decompression bombs and the pixel limit ---------------------------------------------


@pytest.mark.parametrize(
    ("side", "words"),
    [
        (60000, ("3600 megapixels",)),  # Pillow raises DecompressionBombError
        (10000, ("100 megapixels",)),  # Pillow warns; we turn the warning into an error
        (8000, ("8000x8000", "64 megapixels")),  # under Pillow's threshold; our own header check
    ],
)
def test_decompression_bomb_rejected_from_header(side, words, monkeypatch, pillow_state):
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self)
    )
    bomb = handmade_png(side, side, 8, 2, b"\x00" * 64)
    assert len(bomb) < 200
    start = time.perf_counter()
    expect_error(bomb, "pixels", *words, "above the 40 megapixel limit")
    assert time.perf_counter() - start < 1.0
    assert decoded == []


def test_pillow_bomb_warning_is_an_error_even_under_a_looser_limit(monkeypatch, pillow_state):
    # 100 MP is inside this limit, but Pillow's own warning threshold (~89 MP)
    # must still stop it before anything is allocated.
    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda self: decoded.append(self) or real_load(self)
    )
    bomb = handmade_png(10000, 10000, 8, 2, b"\x00" * 64)
    err = expect_error(bomb, "pixels", "100 megapixels", "89.5 megapixel limit",
                       limits=ImageLimits(max_pixels=150_000_000))
    assert isinstance(err.__cause__, Image.DecompressionBombWarning)
    assert decoded == []


def test_concurrent_loads_leave_warning_filters_alone(pillow_state):
    bomb = handmade_png(10000, 10000, 8, 2, b"\x00" * 64)
    good = encode(two_colour(), "PNG")

    def work(i):
        for _ in range(15):
            try:
                load_image(bomb if i % 2 else good)
            except ImageLoadError as err:
                assert err.reason == "pixels"

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_pixel_limit_is_configurable():
    data = encode(Image.new("RGB", (30, 20), RED), "PNG")
    expect_error(data, "pixels", "30x20", limits=ImageLimits(max_pixels=599))
    assert load_image(data, ImageLimits(max_pixels=600)).size == (30, 20)


def test_pixel_limit_applies_to_pil_input():
    big = Image.new("L", (50, 40))
    expect_error(big, "pixels", "50x40", limits=ImageLimits(max_pixels=1999))


def test_limits_normalise_and_validate():
    assert ImageLimits(formats=frozenset({"png", "Jpeg"})).formats == {"PNG", "JPEG"}
    assert "MPO" in ImageLimits().formats
    with pytest.raises(ValueError):
        ImageLimits(max_pixels=0)


# -- modes ---------------------------------------------------------------------------


def test_16bit_grey_png_is_mid_grey_not_white():
    a = np.linspace(29000, 31000, 40, dtype=np.float64).reshape(4, 10).astype(np.uint16)
    data = png_from_array(a, color_type=0)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    out = np.asarray(load_image(data))
    assert out.shape == (4, 10, 3)
    assert 105 <= out.min() and out.max() <= 125  # 30000 / 65535 * 255 ~ 117
    assert out[0, 0, 0] < out[-1, -1, 0]  # the gradient survives


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16bit_tiff_and_int_modes_scale_by_65535(mode):
    im = Image.new(mode, (6, 4), 30000)
    im.putpixel((0, 0), 65535)
    im.putpixel((1, 0), 0)
    for source in (im, encode(im, "TIFF")):
        out = load_image(source)
        assert out.getpixel((0, 0)) == WHITE
        assert out.getpixel((1, 0)) == (0, 0, 0)
        assert out.getpixel((3, 3)) == (117, 117, 117)


def test_int_mode_outside_16bit_range_uses_actual_range():
    a = np.array([[-1000, 0], [100000, 200000]], dtype=np.int32)
    out = np.asarray(load_image(Image.fromarray(a)))[..., 0]
    assert out[0, 0] == 0 and out[1, 1] == 255
    assert 0 < out[0, 1] < out[1, 0] < 255


def test_16bit_rgb_png_keeps_relative_values():
    a = np.zeros((3, 4, 3), dtype=np.uint16)
    a[...] = (60000, 30000, 1000)
    out = load_image(png_from_array(a, color_type=2))
    r, g, b = out.getpixel((1, 1))
    assert close((r, g, b), (233, 117, 4), 2)
    assert r > g > b


def test_16bit_grey_alpha_png():
    a = np.zeros((2, 3, 2), dtype=np.uint16)
    a[..., 0] = 30000
    a[..., 1] = 65535
    a[0, 0, 1] = 0  # one fully transparent pixel
    out = load_image(png_from_array(a, color_type=4))
    assert close(out.getpixel((1, 1)), (117, 117, 117), 2)
    assert out.getpixel((0, 0)) == WHITE


def test_float_tiff_scaled_by_its_range(tmp_path):
    a = np.linspace(0, 1000, 50, dtype=np.float32).reshape(5, 10)
    path = tmp_path / "depth.tif"
    Image.fromarray(a).save(path)
    assert Image.open(path).mode == "F"
    out = np.asarray(load_image(path))[..., 0].astype(int).ravel()
    assert out[0] == 0 and out[-1] == 255
    assert np.all(np.diff(out) >= 0)
    assert 120 <= out[25] <= 135


def test_float_in_unit_range_and_non_finite_values():
    a = np.array([[0.0, 0.5, 1.0], [np.nan, np.inf, -np.inf]], dtype=np.float32)
    out = np.asarray(load_image(Image.fromarray(a)))[..., 0]
    assert out[0].tolist() == [0, 128, 255]
    assert out[1].tolist() == [0, 255, 0]


def test_cmyk_jpeg_becomes_rgb():
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)
    src = Image.open(io.BytesIO(data))
    assert src.mode == "CMYK" and "adobe" in src.info  # Pillow writes an Adobe (inverted) CMYK JPEG
    out = load_image(data)
    assert out.mode == "RGB"
    assert close(out.getpixel((8, 8)), RED, 10)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "YCbCr"])
def test_plain_modes_become_rgb(mode):
    im = two_colour().convert(mode) if mode != "1" else Image.new("1", (16, 12), 1)
    out = load_image(im)
    assert out.mode == "RGB" and out.size == (16, 12)
    if mode == "1":
        assert out.getpixel((0, 0)) == WHITE
    elif mode == "L":
        assert out.getpixel((0, 0)) == (76, 76, 76)  # ITU-R 601 luma of pure red
    else:
        assert close(out.getpixel((0, 0)), RED, 3)


def test_palette_png_with_transparency_on_white():
    im = Image.new("P", (4, 4), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((1, 1), 1)
    data = encode(im, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = load_image(data)
    assert out.getpixel((0, 0)) == WHITE  # transparent black -> white
    assert out.getpixel((1, 1)) == RED


def test_grey_png_with_trns_on_white():
    im = Image.new("L", (2, 1), 0)
    im.putpixel((1, 0), 90)
    out = load_image(encode(im, "PNG", transparency=0))
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 0)) == (90, 90, 90)


@pytest.mark.parametrize("as_png", [False, True], ids=["pil", "png"])
def test_rgba_composited_on_white(as_png):
    im = Image.new("RGBA", (3, 1), (0, 0, 0, 0))
    im.putpixel((1, 0), (255, 0, 0, 255))
    im.putpixel((2, 0), (255, 0, 0, 128))
    out = load_image(encode(im, "PNG") if as_png else im)
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 0)) == RED
    assert close(out.getpixel((2, 0)), (255, 127, 127), 2)
    if not as_png:
        assert im.mode == "RGBA"  # the caller's image is untouched


def test_la_composited_on_white():
    im = Image.new("LA", (2, 1), (0, 0))
    im.putpixel((1, 0), (40, 255))
    out = load_image(im)
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 0)) == (40, 40, 40)


# -- animations ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})],
    ids=["gif", "webp", "apng"],
)
def test_animation_first_frame(fmt, params):
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, BLUE, GREEN)]
    data = encode(
        frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0, **params
    )
    assert Image.open(io.BytesIO(data)).is_animated
    out = load_image(data)
    assert out.mode == "RGB" and out.size == (8, 8)
    assert out.getpixel((4, 4)) == RED


def test_gif_transparent_first_frame_on_white():
    frame = Image.new("P", (4, 4), 0)
    frame.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    frame.putpixel((2, 2), 1)
    out = load_image(encode(frame, "GIF", transparency=0))
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((2, 2)) == BLUE


# -- EXIF orientation -------------------------------------------------------------------

# Where the stored image's top-left (red) and top-right (green) corners must be
# displayed for each EXIF orientation, per the EXIF/TIFF specification.
ORIENTATIONS = {
    1: ("top-left", "top-right"),
    2: ("top-right", "top-left"),
    3: ("bottom-right", "bottom-left"),
    4: ("bottom-left", "bottom-right"),
    5: ("top-left", "bottom-left"),
    6: ("top-right", "bottom-right"),
    7: ("bottom-right", "top-right"),
    8: ("bottom-left", "top-left"),
}


def marked() -> Image.Image:
    """40x20 white image, red block at the top-left, green block at the top-right."""
    im = Image.new("RGB", (40, 20), WHITE)
    im.paste(RED, (0, 0, 10, 10))
    im.paste(GREEN, (30, 0, 40, 10))
    return im


def corner(out: Image.Image, where: str) -> tuple[int, int, int]:
    w, h = out.size
    y = 4 if where.startswith("top") else h - 5
    x = 4 if where.endswith("left") else w - 5
    return out.getpixel((x, y))


def jpeg_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(marked(), "JPEG", quality=95, exif=exif.tobytes())


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation(orientation):
    out = load_image(jpeg_with_orientation(orientation))
    assert out.size == ((20, 40) if orientation >= 5 else (40, 20))
    red_at, green_at = ORIENTATIONS[orientation]
    assert close(corner(out, red_at), RED, 40)
    assert close(corner(out, green_at), GREEN, 40)
    others = {"top-left", "top-right", "bottom-left", "bottom-right"} - {red_at, green_at}
    for where in others:
        assert close(corner(out, where), WHITE, 40)


def test_exif_orientation_on_lazily_opened_pil_image():
    src = Image.open(io.BytesIO(jpeg_with_orientation(6)))
    out = load_image(src)
    assert out.size == (20, 40)
    assert close(corner(out, "top-right"), RED, 40)
    assert src.size == (40, 20)  # caller's image not rotated in place


def _exif_ifd(entries) -> bytes:
    """Big-endian EXIF blob with the given (tag, type, count, 4-byte value) entries."""
    body = struct.pack(">H", len(entries))
    for tag, typ, count, value in entries:
        body += struct.pack(">HHI", tag, typ, count) + value.ljust(4, b"\x00")
    return b"Exif\x00\x00MM\x00*\x00\x00\x00\x08" + body + b"\x00\x00\x00\x00"


@pytest.mark.parametrize(
    "exif",
    [
        b"Exif\x00\x00garbage-not-tiff",
        b"Exif\x00\x00II*\x00\xff\xff\xff\x7f",
        b"Exif\x00\x00II",
        _exif_ifd([(0x0112, 3, 1, struct.pack(">H", 9))]),  # orientation out of range
        _exif_ifd([(0x0112, 2, 4, b"abc\x00")]),  # orientation as text
        _exif_ifd([(0x0112, 3, 0xFFFFFFFF, b"\x00\x06")]),  # absurd count
        _exif_ifd([(0x8769, 4, 1, struct.pack(">I", 0xFFFFFFF0))]),  # Exif IFD far away
        _exif_ifd([(0x8769, 4, 1, struct.pack(">I", 8))]),  # Exif IFD pointing at itself
    ],
    ids=[
        "not-tiff", "huge-offset", "short", "orient-9",
        "orient-text", "huge-count", "far-ifd", "ifd-loop",
    ],
)
def test_corrupt_exif_still_loads(exif):
    data = encode(marked(), "JPEG", quality=95, exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns "Corrupt EXIF data"
        out = load_image(data)
    assert out.size == (40, 20)
    assert close(corner(out, "top-left"), RED, 40)


def test_exif_failure_falls_back_to_unrotated(monkeypatch):
    def broken(*args, **kwargs):
        raise SyntaxError("bad EXIF")

    monkeypatch.setattr(ImageOps, "exif_transpose", broken)
    out = load_image(jpeg_with_orientation(6))
    assert out.size == (40, 20) and out.mode == "RGB"


# -- robustness -------------------------------------------------------------------------

_SEEDS = [encode(two_colour((8, 6)), fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(_SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(1, 2000)),
)
def test_mangled_files_never_escape_as_other_errors(seed, edits, cut):
    data = bytearray(seed)
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[:cut]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = load_image(bytes(data), ImageLimits(max_pixels=1_000_000))
        except ImageLoadError as err:
            message = str(err)
            assert message.endswith(".") and "\n" not in message and "object at 0x" not in message
        else:
            assert out.mode == "RGB" and out.width * out.height <= 1_000_000
