"""From an image file to the uint8 pixels a model's input is made of: decode (documented formats only, size
checked from the header first), orient, convert to RGB, resize.

One module so that training data, `eval`, `predict`, the service and every later consumer turn the same file into
the same pixels: a skew between two hand-written decoders is a silent accuracy loss. It needs Pillow and numpy
only (no torch), so that a decoding worker process starts in a fraction of a second; the tensor steps after it
(normalise, resize to the model's input) are resnetlab.preprocessing.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
RESIZE_MODES = ("squash", "center-crop")
FORMATS = ("PNG", "JPEG", "BMP", "WebP", "GIF", "TIFF")


class ImageDecodeError(ValueError):
    """A file that is not a readable image (the message names why)."""


class NotAnImage(ImageDecodeError):
    """Bytes no image decoder recognises (as opposed to an image that is damaged or truncated)."""


class ImageTooLarge(ImageDecodeError):
    """An image whose pixel count is over the caller's limit (checked before decoding the pixels)."""


@dataclass(frozen=True)
class ResizePolicy:
    """How a decoded image becomes input_size x input_size.

    squash: resize both sides to input_size (aspect ratio not kept; what CIFAR-style folders need).
    center-crop: resize the shorter side to input_size, then cut the centre square (ImageNet style).
    """

    input_size: int
    mode: str = "squash"

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, got {self.mode!r}")
        if self.input_size < 1:
            raise ValueError(f"input size must be positive, got {self.input_size}")

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "mode": self.mode}


def to_rgb(img: Image.Image) -> Image.Image:
    """Palette, grayscale, 16-bit, RGBA (composited on black) and CMYK images → 8-bit RGB."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: scale to 8 bits instead of clipping.
        arr = np.asarray(img, dtype=np.uint32)
        peak = 65535 if arr.max() > 255 else 255
        img = Image.fromarray((arr * 255 // peak).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        background = Image.new("RGB", img.size, (0, 0, 0))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").split()[-1])
        return background
    return img.convert("RGB")


def open_rgb(source: str | Path | Image.Image | BinaryIO, max_pixels: int | None = None) -> Image.Image:
    """Decode a file or file object (or take a PIL image), apply its EXIF orientation, convert to RGB.

    max_pixels: refuse larger images from their header, before their pixels are decoded (a service must
    not let a small compressed upload expand into gigabytes)."""
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    with _decode_errors(), _open(source, max_pixels) as img:
        img.load()
        return to_rgb(ImageOps.exif_transpose(img))


@contextlib.contextmanager
def _decode_errors() -> Iterator[None]:
    """PIL's many exceptions → ours: too large, not an image, or damaged (with the decoder's reason)."""
    try:
        yield
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"refused as a decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise NotAnImage(f"not an image in a known format ({', '.join(FORMATS)})") from None
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageDecodeError(str(e) or type(e).__name__) from None


def _open(source: str | Path | BinaryIO, max_pixels: int | None) -> Image.Image:
    """Image.open limited to the documented formats (no other decoder — ICO, EPS through Ghostscript, … — ever
    sees the bytes), with the size read from the header checked before anything is decoded."""
    img = Image.open(source, formats=FORMATS)
    if max_pixels is not None and img.width * img.height > max_pixels:
        img.close()
        raise ImageTooLarge(f"{img.width}x{img.height} pixels is over the limit of {max_pixels:,}")
    return img


def image_size(source: str | Path | BinaryIO, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) from the file's header alone (no pixel decoded), with open_rgb's checks and errors."""
    with _decode_errors(), _open(source, max_pixels) as img:
        return img.size


def resize(img: Image.Image, policy: ResizePolicy) -> Image.Image:
    s = policy.input_size
    if policy.mode == "squash":
        return img if img.size == (s, s) else img.resize((s, s), Image.BILINEAR)
    w, h = img.size
    scale = s / min(w, h)
    if (w, h) != (s, s):
        img = img.resize((max(s, round(w * scale)), max(s, round(h * scale))), Image.BILINEAR)
    w, h = img.size
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def load_uint8(source: str | Path | Image.Image | BinaryIO, policy: ResizePolicy,
               max_pixels: int | None = None) -> np.ndarray:
    """(3, S, S) uint8 pixels of one image, by the policy."""
    return np.asarray(resize(open_rgb(source, max_pixels), policy), dtype=np.uint8).transpose(2, 0, 1)
