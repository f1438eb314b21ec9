"""Decoding of uploaded and stored images into uint8 RGB arrays, with size and format checks."""

import io
import logging
import struct
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from modelseek.errors import BadImage, PayloadTooLarge

logger = logging.getLogger(__name__)

# Only these decoders are tried: fewer parsers exposed to untrusted bytes.
ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
# Pillow raises these (not one base class) on corrupt data, depending on the format.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error)
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_WHITE = (255, 255, 255, 255)


def decode_image(data: bytes, max_pixels: int = 40_000_000) -> np.ndarray:
    """Decode an image file's bytes into an upright RGB array.

    EXIF orientation is applied, an animation gives its first frame, CMYK and 16-bit images
    are converted, and transparency is composited on white (as a sketch pad exports it).

    Args:
        data: the file's contents (PNG, JPEG, WebP, GIF, BMP or TIFF).
        max_pixels: the largest width * height accepted; checked on the header, before
            the pixels are decoded.

    Returns:
        (h, w, 3) uint8 RGB.

    Raises:
        BadImage: empty, unidentifiable, truncated or corrupt data.
        PayloadTooLarge: the image has more than `max_pixels` pixels.
    """
    if not data:
        raise BadImage("empty upload: the image has 0 bytes; send the file's contents")

    image = _open_checked(data, max_pixels)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
    except _DECODE_ERRORS as err:
        problem = "truncated" if "truncated" in str(err) else "corrupt"
        raise BadImage(
            f"{problem} {image.format} image ({len(data)} bytes): {err}; upload the complete file"
        ) from err
    return to_rgb_array(image)


def to_rgb_array(image: Image.Image) -> np.ndarray:
    """(h, w, 3) uint8 RGB from a loaded Pillow image of any mode.

    16-bit gray (and 32-bit integer gray, which Pillow uses for some 16-bit files) is scaled
    from the 16-bit range, where Pillow's own conversion would clip it to white; transparency,
    including a palette's, is composited on white.
    """
    if image.mode in _SIXTEEN_BIT_MODES:
        gray = np.asarray(image, dtype=np.float64) * (255.0 / 65535.0)
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)

    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        image = Image.alpha_composite(background, rgba)

    try:
        rgb = image.convert("RGB")
    except ValueError as err:
        raise BadImage(
            f"cannot convert an image of color mode {image.mode!r} to RGB: {err}; "
            "save it as an 8-bit RGB PNG or JPEG"
        ) from err
    return np.asarray(rgb, dtype=np.uint8)


def image_to_png_bytes(array: np.ndarray) -> bytes:
    """Encode (h, w, 3) or (h, w) uint8 pixels as a PNG file, e.g. for a thumbnail.

    Raises:
        ValueError: `array` is not uint8 of one of those shapes.
    """
    if array.dtype != np.uint8 or not (
        array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)
    ):
        raise ValueError(
            f"expected uint8 pixels of shape (h, w, 3) or (h, w), got {array.dtype} {array.shape}"
        )
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    # Image.open reads only the header, so the size is known before any pixel is decoded.
    try:
        image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except Image.DecompressionBombError as err:
        raise PayloadTooLarge(
            f"image too large: {err}; the limit is {max_pixels} pixels, downscale it"
        ) from err
    except UnidentifiedImageError as err:
        raise BadImage(
            f"could not identify the upload ({len(data)} bytes) as an image; accepted "
            f"formats: {', '.join(ACCEPTED_FORMATS)}"
        ) from err
    except _DECODE_ERRORS as err:
        raise BadImage(f"corrupt image header ({len(data)} bytes): {err}") from err

    width, height = image.size
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"image too large: {width}x{height} = {width * height} pixels, more than the limit "
            f"of {max_pixels}; downscale it before uploading"
        )
    return image
