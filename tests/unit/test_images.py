"""Decoding uploads: every shared case gets an RGB array or a named error, never a crash."""

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modelseek.errors import BadImage, PayloadTooLarge
from modelseek.images import decode_image, image_to_png_bytes

# file -> None (decodes) or the error code the API answers with
UPLOAD_OUTCOMES = {
    "ok_rgb.png": None,
    "ok.webp": None,
    "one_pixel.png": None,
    "wide_strip.png": None,
    "cmyk.jpg": None,
    "gray16.png": None,
    "animated.gif": None,
    "exif_rotated.jpg": None,
    "sketch_gray.png": None,
    "sketch_transparent.png": None,
    "truncated.png": "bad_image",
    "not_an_image.png": "bad_image",
    "empty.png": "bad_image",
}
ERROR_WORDS = {
    "truncated.png": "truncated",
    "not_an_image.png": "could not identify",
    "empty.png": "empty upload",
}


def read_upload(cases_dir: Path, name: str) -> bytes:
    return (cases_dir / "uploads" / name).read_bytes()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` gray pixels, with no pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def encode(image: Image.Image, format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def test_outcome_table_covers_every_shared_upload(cases_dir: Path) -> None:
    assert sorted(p.name for p in (cases_dir / "uploads").iterdir()) == sorted(UPLOAD_OUTCOMES)


@pytest.mark.parametrize(("name", "error_code"), sorted(UPLOAD_OUTCOMES.items()))
def test_shared_upload_decodes_or_fails_with_its_code(
    cases_dir: Path, name: str, error_code: str | None
) -> None:
    data = read_upload(cases_dir, name)

    if error_code is None:
        pixels = decode_image(data)
        assert pixels.dtype == np.uint8
        assert pixels.ndim == 3 and pixels.shape[2] == 3
        assert pixels.shape[0] >= 1 and pixels.shape[1] >= 1
    else:
        with pytest.raises(BadImage) as info:
            decode_image(data)
        assert info.value.code == error_code
        assert ERROR_WORDS[name] in str(info.value)


def test_not_an_image_lists_accepted_formats(cases_dir: Path) -> None:
    with pytest.raises(BadImage, match="accepted formats: PNG, JPEG, WEBP"):
        decode_image(read_upload(cases_dir, "not_an_image.png"))


def test_exif_rotated_jpeg_comes_out_upright(cases_dir: Path) -> None:
    raw = Image.open(io.BytesIO(read_upload(cases_dir, "exif_rotated.jpg")))
    assert raw.size == (300, 100)  # stored landscape, with a black band on its left

    pixels = decode_image(read_upload(cases_dir, "exif_rotated.jpg"))

    # Orientation 6 turns it portrait, the band rotating clockwise to the top.
    assert pixels.shape == (300, 100, 3)
    assert pixels[:40].mean() < 20
    assert pixels[-100:, :, 0].mean() > 150 and pixels[-100:, :, 1].mean() < 80


def test_transparent_sketch_is_composited_on_white(cases_dir: Path) -> None:
    pixels = decode_image(read_upload(cases_dir, "sketch_transparent.png"))

    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[-1, -1].tolist() == [255, 255, 255]
    assert pixels.min() == 0  # the strokes stay black


def test_gray16_is_scaled_not_clipped_to_white(cases_dir: Path) -> None:
    # The shared file is a flat 16-bit gray of 40000; 40000 / 65535 * 255 = 155.6.
    pixels = decode_image(read_upload(cases_dir, "gray16.png"))

    assert np.all(pixels == 156)


def test_gray16_gradient_keeps_its_range() -> None:
    ramp = np.linspace(0, 65535, 256, dtype=np.uint16)[None, :].repeat(4, axis=0)
    data = encode(Image.fromarray(ramp))  # mode I;16

    pixels = decode_image(data)

    assert (pixels[..., 0].min(), pixels[..., 0].max()) == (0, 255)
    assert len(np.unique(pixels[..., 0])) > 200


def test_cmyk_becomes_the_same_colour_in_rgb(cases_dir: Path) -> None:
    pixels = decode_image(read_upload(cases_dir, "cmyk.jpg"))

    assert np.abs(pixels[75, 100].astype(int) - [255, 128, 0]).max() <= 3


def test_animation_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)

    pixels = decode_image(data)

    assert pixels[0, 0].tolist() == [255, 0, 0]


def transparent_with_one_black_pixel(mode: str) -> bytes:
    if mode == "P":
        image = Image.new("P", (4, 4), 0)
        image.putpalette([0, 0, 0, 0, 0, 0])
        image.putpixel((0, 0), 1)
        return encode(image, transparency=0)
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    image.putpixel((0, 0), (0, 0, 0, 255))
    return encode(image.convert(mode))


@pytest.mark.parametrize("mode", ["LA", "RGBA", "P"])
def test_transparency_of_every_mode_is_composited_on_white(mode: str) -> None:
    pixels = decode_image(transparent_with_one_black_pixel(mode))

    assert pixels[3, 3].tolist() == [255, 255, 255]
    assert pixels[0, 0].tolist() == [0, 0, 0]


def test_more_pixels_than_the_limit_is_rejected_from_the_header() -> None:
    with pytest.raises(PayloadTooLarge, match="7000x7000 = 49000000 pixels") as info:
        decode_image(png_header_only(7000, 7000))

    assert info.value.code == "payload_too_large"


def test_decompression_bomb_is_payload_too_large() -> None:
    # Past twice Pillow's own limit, Image.open itself refuses it.
    with pytest.raises(PayloadTooLarge):
        decode_image(png_header_only(20000, 20000), max_pixels=10**12)


def test_limit_is_configurable(cases_dir: Path) -> None:
    with pytest.raises(PayloadTooLarge, match="320x240"):
        decode_image(read_upload(cases_dir, "ok_rgb.png"), max_pixels=320 * 240 - 1)


def test_png_bytes_round_trip() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)

    assert np.array_equal(decode_image(image_to_png_bytes(pixels)), pixels)


def test_png_bytes_rejects_floats() -> None:
    with pytest.raises(ValueError, match="expected uint8 pixels of shape"):
        image_to_png_bytes(np.zeros((4, 4, 3), dtype=np.float32))
