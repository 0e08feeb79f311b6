"""Decode any image file found in a scraped folder (or its bytes) into correct RGB, or say exactly why not.

Folders of photos collected from the web hold more than clean RGB JPEGs: PNGs named
``.jpg``, palette GIFs with transparency, CMYK JPEGs, 16-bit grayscale PNGs, photos stored
sideways with an EXIF orientation tag, half-downloaded files, and stray ``.DS_Store`` or
``Thumbs.db`` files. Everything here turns such a file into an upright 8-bit RGB picture
that looks the way a viewer would show it, or raises :class:`BadImageError` carrying a
short, fixed reason a report can group by ("empty file (0 bytes)", "not an image", ...).
Every public function takes a path or the file's bytes (an HTTP upload): both pass the same
checks, and an error names the file, or for bytes ``the uploaded image`` (or the caller's name).

Nothing here changes PIL's global state: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone,
so a truncated file fails loudly instead of being silently padded with grey.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "CORRUPT",
    "DRAFT_MARGIN",
    "EMPTY",
    "MAX_IMAGE_PIXELS",
    "NOT_AN_IMAGE",
    "TOO_LARGE",
    "UNREADABLE",
    "UPLOADED",
    "BadImageError",
    "ImageSource",
    "decode_resized",
    "load_rgb",
    "probe_image",
]

NOT_AN_IMAGE = "not an image"
EMPTY = "empty file (0 bytes)"
CORRUPT = "truncated or corrupt image"
UNREADABLE = "unreadable"
TOO_LARGE = "decompression-bomb size"

#: A JPEG is decoded at a reduced DCT scale only while it stays at least this many times the
#: size asked for (:func:`decode_resized`). Changing it changes the decoded pixels: bump the
#: ``DecodeSettings`` tag with it, so no cache entry decoded the old way is served.
DRAFT_MARGIN = 2

#: Images with more pixels than this are refused before any pixel is decoded. PIL's own guard
#: (``PIL.Image.MAX_IMAGE_PIXELS``, about 89.5 million) also applies and is reported the same
#: way, so raising this limit above PIL's only takes effect if PIL's is raised too.
MAX_IMAGE_PIXELS: int = 80_000_000

Background = tuple[int, int, int]
WHITE: Background = (255, 255, 255)

ImageSource = Path | str | bytes
"""An image file's path, or the file's bytes."""
UPLOADED = "the uploaded image"
"""How errors name an image given as bytes, unless the caller names it."""

# First bytes of the formats people actually scrape. A file that starts like one of these but
# that PIL cannot identify is a damaged image, not a stray non-image file.
_IMAGE_SIGNATURES: tuple[bytes, ...] = (
    b"\xff\xd8\xff",  # JPEG
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
    b"II*\x00",  # TIFF, little-endian
    b"MM\x00*",  # TIFF, big-endian
)

# Modes that carry their own alpha channel (possibly premultiplied).
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Modes holding more than 8 bits per sample; PIL's convert("RGB") clips them instead of scaling.
_WIDE_MODES = frozenset({"I", "F"})


class BadImageError(ValueError):
    """A file that cannot be used as a training image, with the category of the problem.

    ``path`` is the file, or the name of an image given as bytes (``the uploaded image``);
    ``reason`` is one of the module's constants (``NOT_AN_IMAGE``, ``EMPTY``, ``CORRUPT``,
    ``UNREADABLE``, ``TOO_LARGE``), so callers can count and report failures by kind;
    ``detail`` keeps the underlying message for whoever has to look at the file.
    """

    def __init__(self, path: Path | str, reason: str, detail: str = "") -> None:
        self.path = path
        self.reason = reason
        self.detail = detail
        message = f"{self.path}: {reason}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)

    def __reduce__(self):  # keep the fields when crossing DataLoader worker processes
        return (type(self), (self.path, self.reason, self.detail))


# --------------------------------------------------------------------------- public API


def probe_image(source: ImageSource, *, name: str = UPLOADED) -> tuple[int, int]:
    """Check from the header alone that ``source`` (a path, or bytes that errors call ``name``) is
    an image of acceptable size.

    Cheap enough to run over a whole dataset before training: it identifies the file by its
    content (a PNG named ``.jpg`` passes, a ``.txt`` or ``Thumbs.db`` does not) but decodes no
    pixels, so a truncated file with an intact header passes here and fails in
    :func:`load_rgb`. Returns ``(width, height)`` as :func:`load_rgb` would return them, that
    is with EXIF orientation applied (a portrait photo stored sideways reports portrait).
    Raises :class:`BadImageError` for empty, unreadable, non-image and oversized files.
    """
    with _open_checked(_Source.of(source, name)) as image:
        width, height = image.size
        if _orientation_swaps_axes(image):
            width, height = height, width
        return width, height


def load_rgb(source: ImageSource, background: Background = WHITE, *, name: str = UPLOADED) -> Image.Image:
    """Fully decode ``source`` (a path, or bytes that errors call ``name``) into an upright 8-bit RGB
    image that looks as a viewer shows it.

    EXIF orientation is applied; every PIL mode is converted faithfully (16-bit and float
    grayscale are rescaled rather than clipped to white, CMYK is converted, palettes are
    expanded), and transparent areas are composited onto ``background`` instead of showing
    whatever colour happens to sit under the alpha. Every pixel is decoded here, so a
    truncated or corrupt file raises :class:`BadImageError` (``CORRUPT``) now rather than
    later inside a training step.
    """
    return _decode(_Source.of(source, name), background, draft_size=None)


def decode_resized(
    source: ImageSource,
    size: int,
    *,
    background: Background = WHITE,
    autocrop: bool = False,
    name: str = UPLOADED,
) -> np.ndarray:
    """Decode ``source`` (a path, or bytes that errors call ``name``) to a ``size x size`` RGB array
    (HxWx3, uint8, C-contiguous, writable).

    The picture is squeezed to a square, ignoring its aspect ratio, as the original notebook
    did, with an antialiased bilinear resize. With ``autocrop`` it is first cropped to the
    gem's bounding box (see :mod:`gem_lightning.data.autocrop`). Large JPEGs are decoded at a
    reduced scale straight from the DCT data (1/2, 1/4 or 1/8), several times faster, but never
    below :data:`DRAFT_MARGIN` times ``size`` (twice that with ``autocrop``: a crop keeps only
    part of the picture), so the antialiased resize still makes the final pixels: with a margin
    of 1 (before ``DecodeSettings`` tag v2) predictions differed from a full decode's for 4 % of
    the gemstones test photos, with 2 for 0.2 % (``benchmarks/draft_decoding.py``).
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    draft_size = size * DRAFT_MARGIN * (2 if autocrop else 1)
    image = _decode(_Source.of(source, name), background, draft_size=draft_size)
    if autocrop:
        from gem_lightning.data.autocrop import autocrop as crop_to_gem

        image = crop_to_gem(image)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    # np.array copies into a writable array (np.asarray of a PIL image is read-only, which
    # torch.from_numpy warns about).
    return np.array(image, dtype=np.uint8, order="C")


# --------------------------------------------------------------------------- opening


@dataclass(frozen=True)
class _Source:
    """An image file, or its bytes, with the name its errors carry (the path, for a file)."""

    content: Path | bytes
    label: Path | str

    @staticmethod
    def of(source: ImageSource, name: str) -> _Source:
        """A path (``str`` or ``Path``) names itself; bytes are called ``name``."""
        if isinstance(source, bytes):
            return _Source(source, name)
        return _Source(Path(source), Path(source))

    def open(self) -> Image.Image:
        """PIL's lazy open: the header only."""
        return Image.open(io.BytesIO(self.content) if isinstance(self.content, bytes) else self.content)

    def byte_count(self) -> int:
        """The file's size; a file that cannot be stat'ed is UNREADABLE."""
        if isinstance(self.content, bytes):
            return len(self.content)
        try:
            return os.stat(self.content).st_size
        except OSError as err:
            raise BadImageError(self.label, UNREADABLE, _describe(err)) from err

    def head(self) -> bytes:
        """The first bytes, where a format's signature sits (none if the file cannot be read)."""
        if isinstance(self.content, bytes):
            return self.content[:16]
        try:
            with open(self.content, "rb") as handle:
                return handle.read(16)
        except OSError:
            return b""


def _open_checked(source: _Source) -> Image.Image:
    """Open ``source`` lazily (header only) and enforce the size limit, or raise BadImageError."""
    if source.byte_count() == 0:
        raise BadImageError(source.label, EMPTY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = source.open()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(source.label, TOO_LARGE, str(err)) from err
    except UnidentifiedImageError as err:
        reason = CORRUPT if _has_image_signature(source.head()) else NOT_AN_IMAGE
        raise BadImageError(source.label, reason, "format not recognised") from err
    except OSError as err:  # permission denied, missing, a directory, I/O error, broken header
        reason = UNREADABLE if err.errno is not None else CORRUPT  # PIL's own errors carry no errno
        raise BadImageError(source.label, reason, _describe(err)) from err
    except Exception as err:  # a plugin recognised the format, then choked on its header
        raise BadImageError(source.label, CORRUPT, _describe(err)) from err
    try:
        _check_pixel_count(source.label, image)
    except BadImageError:
        image.close()
        raise
    return image


def _check_pixel_count(label: Path | str, image: Image.Image) -> None:
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        detail = f"{width}x{height} = {width * height:,} pixels > limit {MAX_IMAGE_PIXELS:,}"
        raise BadImageError(label, TOO_LARGE, detail)


def _has_image_signature(head: bytes) -> bool:
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return True
    return head.startswith(_IMAGE_SIGNATURES)


def _describe(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# --------------------------------------------------------------------------- decoding


def _decode(source: _Source, background: Background, draft_size: int | None) -> Image.Image:
    """Open, optionally JPEG-draft, decode every pixel, orient and convert to RGB."""
    with _open_checked(source) as image:
        if draft_size is not None and image.format in ("JPEG", "MPO"):
            # Square target, so EXIF rotation cannot make the draft too small.
            image.draft("RGB", (draft_size, draft_size))
        try:
            image.load()
        except Exception as err:  # OSError("image file is truncated"), SyntaxError, zlib...
            raise BadImageError(source.label, CORRUPT, _describe(err)) from err
        upright = _apply_orientation(image)
        try:
            return _to_rgb(upright, background)
        except ValueError as err:  # a colour mode PIL cannot convert (e.g. LAB)
            raise BadImageError(source.label, CORRUPT, _describe(err)) from err


_EXIF_ORIENTATION = 0x0112


def _exif_orientation(image: Image.Image, header_only: bool = False) -> int:
    """The EXIF orientation tag (1 = stored upright); unreadable EXIF counts as upright.

    With ``header_only`` no pixel data is read: PIL would otherwise decode a whole PNG to
    look for an EXIF chunk placed after the pixels (rare; :func:`load_rgb` still honours it).
    """
    if header_only and image.format == "PNG" and "exif" not in image.info:
        return 1
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:
        return 1
    return orientation if isinstance(orientation, int) and 1 <= orientation <= 8 else 1


def _orientation_swaps_axes(image: Image.Image) -> bool:
    return _exif_orientation(image, header_only=True) in (5, 6, 7, 8)


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says; broken EXIF leaves the pixels as stored."""
    if _exif_orientation(image) == 1:
        return image
    try:
        upright = ImageOps.exif_transpose(image)
    except Exception:
        return image
    return image if upright is None else upright


def _to_rgb(image: Image.Image, background: Background) -> Image.Image:
    """Convert a decoded image of any mode into a new 8-bit RGB image."""
    if image.mode in _WIDE_MODES or image.mode.startswith("I;16"):
        return _wide_gray_to_rgb(image, background)
    if _has_transparency(image):
        return _composite(image.convert("RGBA"), background)
    return image.convert("RGB")


def _has_transparency(image: Image.Image) -> bool:
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def _composite(rgba: Image.Image, background: Background) -> Image.Image:
    """Alpha-composite ``rgba`` onto a solid ``background`` and drop the alpha channel."""
    backdrop = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(backdrop, rgba).convert("RGB")


def _wide_gray_to_rgb(image: Image.Image, background: Background) -> Image.Image:
    """Scale 16/32-bit integer or float grayscale to 8 bits (PIL would clip it to white)."""
    raw = np.asarray(image)
    gray = _to_uint8_range(raw, image.mode)
    rgb = Image.fromarray(np.repeat(gray[:, :, None], 3, axis=2))
    transparent_value = image.info.get("transparency")
    if isinstance(transparent_value, (int, float)):
        alpha = np.where(raw == transparent_value, 0, 255).astype(np.uint8)
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha))
        return _composite(rgba, background)
    return rgb


def _to_uint8_range(raw: np.ndarray, mode: str) -> np.ndarray:
    """Map wide-range samples to 0..255.

    16-bit modes use their full 0..65535 scale. For 32-bit "I" and float "F" images the
    nominal range is guessed from the values: 0..1 floats, then 0..255, then 0..65535, and
    otherwise the image's own min..max.
    """
    values = raw.astype(np.float64)
    if mode.startswith("I;16"):
        low, high = 0.0, 65535.0
    else:
        finite = values[np.isfinite(values)]
        vmin = float(finite.min()) if finite.size else 0.0
        vmax = float(finite.max()) if finite.size else 0.0
        if mode == "F" and vmin >= 0.0 and vmax <= 1.0:
            low, high = 0.0, 1.0
        elif vmin >= 0.0 and vmax <= 255.0:
            low, high = 0.0, 255.0
        elif vmin >= 0.0 and vmax <= 65535.0:
            low, high = 0.0, 65535.0
        else:
            low, high = vmin, max(vmax, vmin + 1e-12)
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
