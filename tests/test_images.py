"""Tests for gem_lightning.data.images (decoding) and gem_lightning.data.autocrop.

Every case builds its own small image in tmp_path; one test also uses the real gemstone
photos when the shared dataset is present next to the repository.
"""

from __future__ import annotations

import io
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from gem_lightning.data import images
from gem_lightning.data.autocrop import autocrop, gem_bounding_box
from gem_lightning.data.images import (
    CORRUPT,
    EMPTY,
    NOT_AN_IMAGE,
    TOO_LARGE,
    UNREADABLE,
    BadImageError,
    decode_resized,
    load_rgb,
    probe_image,
)

GEMSTONES = Path(__file__).resolve().parents[1].parent / "shared/datasets/gemstones"


# --------------------------------------------------------------------------- helpers


def save(image: Image.Image, path: Path, fmt: str, **options) -> Path:
    image.save(path, fmt, **options)
    return path


def pixel(image: Image.Image, xy: tuple[int, int] = (0, 0)) -> np.ndarray:
    return np.asarray(image, dtype=int)[xy[1], xy[0]]


def assert_rgb(image: Image.Image, size: tuple[int, int]) -> None:
    assert image.mode == "RGB"
    assert image.size == size


def assert_close(actual, expected, tolerance: int = 3) -> None:
    assert np.abs(np.asarray(actual, dtype=int) - np.asarray(expected)).max() <= tolerance, (
        f"{tuple(actual)} != {tuple(expected)} (+-{tolerance})"
    )


def noisy_jpeg(path: Path, size: tuple[int, int] = (256, 192), seed: int = 0) -> Path:
    """A JPEG big enough (incompressible noise) that cutting it leaves real damage."""
    noise = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return save(Image.fromarray(noise), path, "JPEG", quality=90)


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    inter_w = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    area = lambda box: (box[2] - box[0]) * (box[3] - box[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


# --------------------------------------------------------------------------- modes


def test_rgb_jpeg(tmp_path):
    path = save(Image.new("RGB", (20, 10), (10, 200, 30)), tmp_path / "a.jpg", "JPEG", quality=95)
    image = load_rgb(path)
    assert_rgb(image, (20, 10))
    assert_close(pixel(image, (5, 5)), (10, 200, 30), tolerance=4)


def test_half_transparent_rgba_png_named_jpg_is_composited_on_white(tmp_path):
    path = save(Image.new("RGBA", (8, 6), (255, 0, 0, 128)), tmp_path / "red.jpg", "PNG")
    image = load_rgb(path)
    assert_rgb(image, (8, 6))
    assert_close(pixel(image), (255, 128, 128), tolerance=2)


def test_fully_transparent_area_takes_the_background_not_the_hidden_colour(tmp_path):
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)  # transparent black
    rgba[:, 4:] = (0, 0, 255, 255)  # opaque blue on the right half
    path = save(Image.fromarray(rgba), tmp_path / "a.png", "PNG")
    assert_close(pixel(load_rgb(path), (1, 1)), (255, 255, 255), tolerance=0)
    assert_close(pixel(load_rgb(path, background=(0, 128, 0)), (1, 1)), (0, 128, 0), tolerance=0)
    assert_close(pixel(load_rgb(path), (6, 1)), (0, 0, 255), tolerance=0)


def test_grayscale_with_alpha(tmp_path):
    path = save(Image.new("LA", (5, 5), (0, 0)), tmp_path / "la.png", "PNG")
    assert_close(pixel(load_rgb(path)), (255, 255, 255), tolerance=0)
    path = save(Image.new("LA", (5, 5), (40, 255)), tmp_path / "la2.png", "PNG")
    assert_close(pixel(load_rgb(path)), (40, 40, 40), tolerance=0)


def test_grayscale_and_bilevel(tmp_path):
    gray = save(Image.new("L", (5, 5), 77), tmp_path / "l.png", "PNG")
    assert_close(pixel(load_rgb(gray)), (77, 77, 77), tolerance=0)
    bilevel = Image.new("1", (5, 5), 0)
    bilevel.putpixel((2, 2), 1)
    image = load_rgb(save(bilevel, tmp_path / "one.png", "PNG"))
    assert_close(pixel(image, (0, 0)), (0, 0, 0), tolerance=0)
    assert_close(pixel(image, (2, 2)), (255, 255, 255), tolerance=0)


def palette_image() -> Image.Image:
    image = Image.new("P", (6, 4), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)  # 0 = red, 1 = blue
    image.paste(1, (3, 0, 6, 4))
    return image


def test_palette_without_transparency(tmp_path):
    image = load_rgb(save(palette_image(), tmp_path / "p.png", "PNG"))
    assert_close(pixel(image, (0, 0)), (255, 0, 0), tolerance=0)
    assert_close(pixel(image, (5, 0)), (0, 0, 255), tolerance=0)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparency(tmp_path, fmt):
    path = save(palette_image(), tmp_path / f"p.{fmt.lower()}", fmt, transparency=0)
    image = load_rgb(path, background=(0, 255, 0))
    assert_close(pixel(image, (0, 0)), (0, 255, 0), tolerance=0)  # transparent red -> bg
    assert_close(pixel(image, (5, 0)), (0, 0, 255), tolerance=0)


def test_rgb_png_with_transparent_colour_key(tmp_path):
    image = Image.new("RGB", (4, 4), (1, 2, 3))
    image.putpixel((3, 3), (200, 100, 50))
    path = save(image, tmp_path / "key.png", "PNG", transparency=(1, 2, 3))
    loaded = load_rgb(path)
    assert_close(pixel(loaded, (0, 0)), (255, 255, 255), tolerance=0)
    assert_close(pixel(loaded, (3, 3)), (200, 100, 50), tolerance=0)


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = np.array([[65535, 32768, 0, 257]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "gray16.png", "PNG")
    assert Image.open(path).mode.startswith("I")
    image = load_rgb(path)
    assert_rgb(image, (4, 1))
    assert_close(pixel(image, (0, 0)), (255, 255, 255), tolerance=0)
    assert_close(pixel(image, (1, 0)), (128, 128, 128), tolerance=1)
    assert_close(pixel(image, (2, 0)), (0, 0, 0), tolerance=0)
    assert_close(pixel(image, (3, 0)), (1, 1, 1), tolerance=0)


def test_16bit_big_endian_tiff(tmp_path):
    raw = np.array([[65535, 32768]], dtype=">u2").tobytes()
    path = save(Image.frombytes("I;16B", (2, 1), raw), tmp_path / "be.tif", "TIFF")
    assert Image.open(path).mode == "I;16B"
    image = load_rgb(path)
    assert_close(pixel(image, (0, 0)), (255, 255, 255), tolerance=0)
    assert_close(pixel(image, (1, 0)), (128, 128, 128), tolerance=1)


def test_32bit_integer_and_float_grayscale(tmp_path):
    ints = save(Image.fromarray(np.array([[0, 65535]], np.int32)), tmp_path / "i.tif", "TIFF")
    assert Image.open(ints).mode == "I"
    assert_close(pixel(load_rgb(ints), (1, 0)), (255, 255, 255), tolerance=0)
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    path = save(floats, tmp_path / "f.tif", "TIFF")
    assert Image.open(path).mode == "F"
    image = load_rgb(path)
    assert_close(pixel(image, (1, 0)), (128, 128, 128), tolerance=1)
    assert_close(pixel(image, (2, 0)), (255, 255, 255), tolerance=0)


def test_cmyk_jpeg_of_pure_cyan_comes_out_cyan(tmp_path):
    path = save(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), tmp_path / "c.jpg", "JPEG")
    assert Image.open(path).mode == "CMYK"
    image = load_rgb(path)
    assert_rgb(image, (16, 16))
    assert_close(pixel(image, (8, 8)), (0, 255, 255), tolerance=8)


def oriented_jpeg(path: Path, size: tuple[int, int], orientation: int) -> Path:
    """A JPEG whose stored top-left quarter is red (rest blue), with an EXIF orientation."""
    width, height = size
    image = Image.new("RGB", size, (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height // 2))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(image, path, "JPEG", quality=95, exif=exif.tobytes())


def test_exif_orientation_6_is_applied(tmp_path):
    path = oriented_jpeg(tmp_path / "rot.jpg", (40, 20), orientation=6)
    image = load_rgb(path)
    # Orientation 6: rotate 90 degrees clockwise for display; stored top-left -> top-right.
    assert image.size == (20, 40)
    assert_close(pixel(image, (17, 2)), (255, 0, 0), tolerance=12)
    assert_close(pixel(image, (2, 2)), (0, 0, 255), tolerance=12)
    assert_close(pixel(image, (17, 37)), (0, 0, 255), tolerance=12)
    assert probe_image(path) == (20, 40)


# --------------------------------------------------------------------------- failures


def expect_bad(reason: str, call, *args, **kwargs) -> BadImageError:
    with pytest.raises(BadImageError) as info:
        call(*args, **kwargs)
    assert info.value.reason == reason, str(info.value)
    return info.value


@pytest.mark.parametrize("call", [probe_image, load_rgb, lambda p: decode_resized(p, 8)])
def test_zero_byte_file(tmp_path, call):
    path = tmp_path / "empty.jpg"
    path.touch()
    error = expect_bad(EMPTY, call, path)
    assert error.path == path
    assert str(error) == f"{path}: empty file (0 bytes)"


@pytest.mark.parametrize(
    "name, content",
    [
        (".DS_Store", b"\x00\x00\x00\x01Bud1" + random.Random(0).randbytes(4000)),
        ("Thumbs.db", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + random.Random(1).randbytes(4000)),
        ("notes.txt", b"these are not the gems you are looking for\n" * 20),
        ("page.jpg", b"<!DOCTYPE html><html><body>403 Forbidden</body></html>"),
    ],
)
def test_non_images_are_recognised_by_content(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    expect_bad(NOT_AN_IMAGE, probe_image, path)
    expect_bad(NOT_AN_IMAGE, load_rgb, path)


def test_png_named_jpg_passes_probe(tmp_path):
    path = save(Image.new("RGBA", (7, 5)), tmp_path / "really_png.jpg", "PNG")
    assert probe_image(path) == (7, 5)


def test_truncated_jpeg_passes_probe_but_not_load(tmp_path):
    full = noisy_jpeg(tmp_path / "full.jpg")
    data = full.read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    assert probe_image(cut) == (256, 192)  # header intact
    error = expect_bad(CORRUPT, load_rgb, cut)
    assert str(error).startswith(f"{cut}: truncated or corrupt image (")
    expect_bad(CORRUPT, decode_resized, cut, 32)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing flipped PIL's global switch


def test_truncated_png(tmp_path):
    noise = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = io.BytesIO()
    Image.fromarray(noise).save(data, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    assert probe_image(path) == (64, 64)
    expect_bad(CORRUPT, load_rgb, path)


def test_garbage_after_an_image_signature_is_corrupt_not_a_non_image(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    expect_bad(CORRUPT, probe_image, path)


def test_header_above_pixel_limit_is_rejected_before_decoding(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (40, 30)), tmp_path / "big.png", "PNG")
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    error = expect_bad(TOO_LARGE, probe_image, path)
    assert "40x30" in str(error)
    expect_bad(TOO_LARGE, load_rgb, path)
    expect_bad(TOO_LARGE, decode_resized, path, 16)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1200)
    assert probe_image(path) == (40, 30)


@pytest.mark.parametrize("size", [(12, 10), (30, 30)])  # PIL warns above 1x, errors above 2x
def test_pil_decompression_bomb_guard_is_reported_as_too_large(tmp_path, monkeypatch, size):
    path = save(Image.new("RGB", size), tmp_path / "bomb.png", "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    expect_bad(TOO_LARGE, probe_image, path)
    expect_bad(TOO_LARGE, load_rgb, path)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="running as root: chmod 000 does not stop root from reading the file",
)
def test_permission_denied_is_unreadable(tmp_path):
    path = save(Image.new("RGB", (4, 4)), tmp_path / "locked.jpg", "JPEG")
    path.chmod(0)
    try:
        expect_bad(UNREADABLE, probe_image, path)
        expect_bad(UNREADABLE, load_rgb, path)
    finally:
        path.chmod(0o644)


def test_os_errors_on_open_are_unreadable(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (4, 4)), tmp_path / "ok.jpg", "JPEG")

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(images.Image, "open", deny)
    error = expect_bad(UNREADABLE, load_rgb, path)
    assert "Permission denied" in str(error)


def test_missing_file_and_directory_are_unreadable(tmp_path):
    expect_bad(UNREADABLE, probe_image, tmp_path / "missing.jpg")
    folder = tmp_path / "folder.jpg"
    folder.mkdir()
    expect_bad(UNREADABLE, load_rgb, folder)


def test_error_survives_pickling_for_dataloader_workers(tmp_path):
    error = BadImageError(tmp_path / "x.jpg", CORRUPT, "cut short")
    clone = pickle.loads(pickle.dumps(error))
    assert (clone.path, clone.reason, clone.detail, str(clone)) == (
        error.path,
        error.reason,
        error.detail,
        str(error),
    )
    assert isinstance(clone, ValueError)


# --------------------------------------------------------------------------- decode_resized


def test_decode_resized_shape_dtype_and_layout(tmp_path):
    path = save(Image.new("RGBA", (50, 20), (0, 0, 255, 255)), tmp_path / "a.png", "PNG")
    array = decode_resized(path, 24)
    assert array.shape == (24, 24, 3)
    assert array.dtype == np.uint8
    assert array.flags["C_CONTIGUOUS"] and array.flags["WRITEABLE"]
    assert_close(array[12, 12], (0, 0, 255), tolerance=0)


def test_decode_resized_large_jpeg_with_draft_matches_full_decode(tmp_path):
    path = oriented_jpeg(tmp_path / "big.jpg", (1600, 1200), orientation=1)
    fast = decode_resized(path, 100).astype(int)
    reference = np.asarray(load_rgb(path).resize((100, 100), Image.Resampling.BILINEAR), int)
    assert fast.shape == (100, 100, 3)
    assert np.abs(fast - reference).mean() < 3


def test_jpeg_draft_never_goes_below_target_size(tmp_path):
    path = noisy_jpeg(tmp_path / "wide.jpg", size=(2000, 300))
    with Image.open(path) as image:
        image.draft("RGB", (150, 150))
        assert min(image.size) >= 150


def test_decode_resized_applies_exif_orientation_with_draft(tmp_path):
    path = oriented_jpeg(tmp_path / "rot.jpg", (1600, 800), orientation=6)
    array = decode_resized(path, 64)
    assert_close(array[5, 58], (255, 0, 0), tolerance=20)  # red now top-right
    assert_close(array[5, 5], (0, 0, 255), tolerance=20)


def test_decode_resized_with_autocrop_zooms_on_the_gem(tmp_path):
    path = save(disc_image((300, 300), (150, 150), 40), tmp_path / "gem.png", "PNG")
    array = decode_resized(path, 64, autocrop=True)
    assert array.shape == (64, 64, 3)
    # The disc now fills most of the frame: the centre and a point 3/4 to the edge are red.
    assert_close(array[32, 32], (200, 30, 40), tolerance=10)
    assert_close(array[32, 56], (200, 30, 40), tolerance=30)


# --------------------------------------------------------------------------- bytes (uploads)


def half_transparent_png(path: Path) -> Path:
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.linspace(0, 255, 40, dtype=np.uint8)  # transparent left, opaque right
    return save(Image.fromarray(rgba), path, "PNG")


IMAGE_KINDS = {
    "JPEG turned by EXIF": lambda tmp: oriented_jpeg(tmp / "rot.jpg", (400, 200), orientation=6),
    "PNG with alpha": lambda tmp: half_transparent_png(tmp / "alpha.png"),
    "grayscale PNG": lambda tmp: save(Image.new("L", (30, 20), 77), tmp / "gray.png", "PNG"),
    "16-bit grayscale PNG": lambda tmp: save(Image.new("I;16", (30, 20), 40000), tmp / "gray16.png", "PNG"),
}


@pytest.mark.parametrize("kind", IMAGE_KINDS)
def test_bytes_decode_exactly_as_the_file(tmp_path, kind):
    path = IMAGE_KINDS[kind](tmp_path)
    data = path.read_bytes()
    assert probe_image(data) == probe_image(path)
    green = (0, 128, 0)
    assert np.array_equal(np.asarray(load_rgb(data, background=green)), np.asarray(load_rgb(path, background=green)))
    assert np.array_equal(decode_resized(data, 24), decode_resized(path, 24))  # the JPEG takes the draft path
    assert np.array_equal(decode_resized(data, 24, autocrop=True), decode_resized(path, 24, autocrop=True))


@pytest.mark.parametrize(
    "reason, damage",
    [
        (CORRUPT, lambda data: data[: len(data) // 2]),
        (NOT_AN_IMAGE, lambda data: b"<!DOCTYPE html><p>403 Forbidden</p>"),
        (EMPTY, lambda data: b""),
    ],
)
def test_bad_bytes_fail_as_the_file_does_and_name_the_upload(tmp_path, reason, damage):
    path = tmp_path / "bad.jpg"
    path.write_bytes(damage(noisy_jpeg(tmp_path / "full.jpg").read_bytes()))
    from_file = expect_bad(reason, load_rgb, path)
    from_bytes = expect_bad(reason, load_rgb, path.read_bytes())
    assert str(from_file).startswith(f"{path}: {reason}")
    assert str(from_bytes) == str(from_file).replace(str(path), "the uploaded image", 1)
    assert (from_bytes.path, from_bytes.detail) == ("the uploaded image", from_file.detail)
    named = expect_bad(reason, decode_resized, path.read_bytes(), 16, name="ruby.jpg")
    assert str(named).startswith(f"ruby.jpg: {reason}")


def test_oversized_bytes_are_refused_before_decoding(tmp_path, monkeypatch):
    data = save(Image.new("RGB", (40, 30)), tmp_path / "big.png", "PNG").read_bytes()
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 1000)
    error = expect_bad(TOO_LARGE, probe_image, data)
    assert str(error).startswith("the uploaded image: decompression-bomb size (40x30")


# --------------------------------------------------------------------------- autocrop


def disc_image(
    size: tuple[int, int],
    centre: tuple[int, int],
    radius: int,
    gradient: bool = False,
    noise: float = 0.0,
) -> Image.Image:
    width, height = size
    ys, xs = np.mgrid[0:height, 0:width]
    if gradient:  # light grey fading to darker grey from left to right and top to bottom
        base = 235 - 50 * (xs / width) - 30 * (ys / height)
        canvas = np.repeat(base[:, :, None], 3, axis=2)
    else:
        canvas = np.full((height, width, 3), 245.0)
    inside = (xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 <= radius**2
    canvas[inside] = (200, 30, 40)
    if noise:
        canvas += np.random.default_rng(0).normal(0, noise, canvas.shape)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


@pytest.mark.parametrize(
    "size, centre, radius, gradient, noise",
    [
        ((256, 256), (128, 128), 50, False, 0.0),
        ((256, 256), (90, 150), 40, True, 0.0),
        ((400, 300), (250, 120), 70, True, 4.0),
        ((1000, 800), (420, 380), 150, False, 2.0),
    ],
)
def test_bounding_box_of_a_disc(size, centre, radius, gradient, noise):
    image = disc_image(size, centre, radius, gradient, noise)
    box = gem_bounding_box(np.asarray(image))
    truth = (centre[0] - radius, centre[1] - radius, centre[0] + radius + 1, centre[1] + radius + 1)
    assert box_iou(box, truth) > 0.8, (box, truth)
    assert box[0] <= truth[0] + 3 and box[1] <= truth[1] + 3  # the whole disc stays in
    assert box[2] >= truth[2] - 3 and box[3] >= truth[3] - 3


def test_box_stays_inside_the_image_for_a_gem_near_the_corner():
    image = disc_image((300, 200), (260, 40), 30)
    left, top, right, bottom = gem_bounding_box(np.asarray(image))
    assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
    assert left <= 230 and top <= 10 and right >= 289 and bottom >= 69


@pytest.mark.parametrize("noise", [0.0, 3.0])
def test_plain_image_falls_back_to_full_frame(noise):
    image = np.full((180, 240, 3), 128.0) + np.random.default_rng(0).normal(0, noise, (180, 240, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    assert gem_bounding_box(image) == (0, 0, 240, 180)
    pil = Image.fromarray(image)
    assert autocrop(pil).size == pil.size


def test_busy_image_falls_back_to_full_frame():
    image = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    assert gem_bounding_box(image) == (0, 0, 128, 128)


def test_autocrop_crops_a_pil_image_to_the_box():
    image = disc_image((640, 480), (300, 260), 80, gradient=True)
    cropped = autocrop(image)
    assert cropped.mode == "RGB"
    assert 160 <= cropped.width <= 200 and 160 <= cropped.height <= 200


def test_bounding_box_rejects_wrong_input():
    with pytest.raises(ValueError):
        gem_bounding_box(np.zeros((10, 10), dtype=np.uint8))


# --------------------------------------------------------------------------- real photos


@pytest.mark.skipif(not GEMSTONES.is_dir(), reason=f"shared gemstones dataset not found at {GEMSTONES}")
def test_real_gemstone_photos():
    photos = sorted(GEMSTONES.glob("*/*/*.jpg"))
    assert photos, f"no photos under {GEMSTONES}"
    disguised_pngs = [p for p in photos if p.read_bytes()[:4] == b"\x89PNG"]
    assert len(disguised_pngs) == 3
    for path in disguised_pngs:
        assert Image.open(path).mode == "RGBA"
        image = load_rgb(path)
        assert image.mode == "RGB"
        assert image.size == probe_image(path)
        # Opaque pixels keep their colour (some photos have a genuinely black backdrop);
        # any pixel that is not fully opaque must not come out pure black.
        source = np.asarray(Image.open(path))
        array = np.asarray(image)
        opaque = source[..., 3] == 255
        assert (array[opaque] == source[..., :3][opaque]).all(), path
        black = (array == 0).all(axis=2)
        assert not (black & ~opaque).any(), f"{path}: transparent pixels came out black"

    rng = random.Random(0)
    by_class = sorted({p.parent for p in photos})
    sample = [rng.choice(sorted(folder.glob("*.jpg"))) for folder in rng.sample(by_class, 20)]
    cropped = 0
    for path in sample:
        image = load_rgb(path)
        left, top, right, bottom = gem_bounding_box(np.asarray(image))
        width, height = image.size
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        box_w, box_h = right - left, bottom - top
        # A sane gem box: not a sliver, not wildly off-square, and centred-ish.
        assert min(box_w, box_h) >= 0.2 * min(width, height), path
        assert max(box_w, box_h) / min(box_w, box_h) < 3, path
        assert left < width / 2 < right and top < height / 2 < bottom, path
        cropped += (left, top, right, bottom) != (0, 0, width, height)
    assert cropped >= 10, "autocrop should find a distinct gem in most dealer photos"
    assert decode_resized(sample[0], 64, autocrop=True).shape == (64, 64, 3)


def test_jpeg_draft_keeps_twice_the_size_asked_for(tmp_path, monkeypatch):
    """A JPEG is shrunk in the DCT only down to DRAFT_MARGIN (2) times the decode size (4 times with
    auto-crop), so the antialiased resize still makes the pixels: a margin of 1 changed 4 % of the
    gemstones test predictions against a full decode (benchmarks/draft_decoding.py)."""
    from PIL import JpegImagePlugin

    from gem_lightning.data import images

    requested = []
    original = JpegImagePlugin.JpegImageFile.draft

    def recording(self, mode, size):
        requested.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", recording)
    path = noisy_jpeg(tmp_path / "big.jpg", size=(1600, 1200))
    decode_resized(path, 100)
    decode_resized(path, 100, autocrop=True)
    assert images.DRAFT_MARGIN == 2 and requested == [(200, 200), (400, 400)]
