"""The image pipeline: decoders agree, bad input is named, resizing lands on the patch grid."""
import io
import sys

import numpy as np
import pytest
from PIL import Image

from prco_mega.data import images as images_mod
from prco_mega.data.images import decode_image, grid_size, resize_to_grid


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise_image(h=37, w=53, mode="RGB", seed=0) -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode=mode)


def test_png_roundtrip_is_exact_from_bytes_and_path(tmp_path):
    image = noise_image()
    data = encoded(image, "PNG")
    (tmp_path / "x.png").write_bytes(data)
    for src in (data, tmp_path / "x.png", str(tmp_path / "x.png")):
        out = decode_image(src)
        assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(image))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_every_mode_becomes_rgb(mode):
    image = noise_image(mode="RGB").convert(mode)
    out = decode_image(encoded(image, "PNG"))
    assert out.mode == "RGB" and out.size == image.size
    assert np.array_equal(np.asarray(out), np.asarray(image.convert("RGB")))


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        decode_image(tmp_path / "nope.png")
    with pytest.raises(ValueError, match="cannot be decoded"):
        decode_image(b"this is not an image")
    truncated = encoded(noise_image(), "PNG")[:200]
    with pytest.raises(ValueError, match="cannot be decoded"):
        decode_image(truncated)
    with pytest.raises(ValueError, match="backend"):
        decode_image(encoded(noise_image(), "PNG"), backend="opencv")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_dali_cpu_decode_equals_pil(fmt):
    pytest.importorskip("nvidia.dali")
    data = encoded(noise_image(h=61, w=47, seed=1), fmt, **({"quality": 90} if fmt == "JPEG"
                                                             else {}))
    pil, dali = decode_image(data, backend="pil"), decode_image(data, backend="dali")
    assert dali.mode == "RGB" and dali.size == pil.size
    assert np.array_equal(np.asarray(dali), np.asarray(pil))


def test_dali_recovers_after_a_corrupt_image():
    pytest.importorskip("nvidia.dali")
    truncated = encoded(noise_image(), "PNG")[:200]  # a valid header: PIL's peek passes it on
    with pytest.raises(ValueError, match="cannot be decoded by DALI"):
        decode_image(truncated, backend="dali")
    data = encoded(noise_image(seed=2), "PNG")
    assert np.array_equal(np.asarray(decode_image(data, backend="dali")),
                          np.asarray(noise_image(seed=2)))


def test_dali_absent_is_an_error_naming_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # makes `import nvidia.dali` fail
    monkeypatch.setattr(images_mod, "_DALI", images_mod._DaliDecoder())
    with pytest.raises(ValueError, match="nvidia-dali"):
        decode_image(encoded(noise_image(), "PNG"), backend="dali")


@pytest.mark.parametrize("hw,kw,expected", [
    ((448, 448), {}, (448, 448)),  # already on the grid
    ((100, 200), {}, (112, 196)),  # 100/28 = 3.6 -> 4 patches, 200/28 = 7.1 -> 7
    # 3000*4000 > 1280*784: s = sqrt(12e6 / 1003520) = 3.458; 3000/s/28 = 30.98 -> 30,
    # 4000/s/28 = 41.3 -> 41
    ((3000, 4000), {}, (840, 1148)),
    # 28x28 < 3136: s = sqrt(3136 / 600) = 2.286; 20*s/28 = 1.63 -> 2, 30*s/28 = 2.45 -> 3
    ((20, 30), {}, (56, 84)),
    ((500, 500), {"max_pixels": 224 * 224}, (224, 224)),
])
def test_grid_size_hand_cases(hw, kw, expected):
    assert grid_size(*hw, **kw) == expected


def test_grid_size_properties():
    rng = np.random.default_rng(0)
    for _ in range(300):
        h, w = (int(x) for x in rng.integers(10, 5000, 2))
        if max(h, w) / min(h, w) > 50:
            continue
        gh, gw = grid_size(h, w)
        assert gh % 28 == 0 and gw % 28 == 0
        assert images_mod.DEFAULT_MIN_PIXELS <= gh * gw <= images_mod.DEFAULT_MAX_PIXELS
        assert abs(np.log((gh / gw) / (h / w))) < 0.7  # aspect kept up to grid rounding


def test_grid_size_rejects_bad_input():
    with pytest.raises(ValueError, match="aspect"):
        grid_size(10, 5000)
    with pytest.raises(ValueError, match="min_pixels"):
        grid_size(100, 100, min_pixels=10_000, max_pixels=5_000)


def test_resize_to_grid():
    image = noise_image(h=100, w=200)
    out = resize_to_grid(image)
    assert out.size == (196, 112)  # PIL sizes are (width, height)
    on_grid = noise_image(h=56, w=84)
    assert resize_to_grid(on_grid) is on_grid


def _transparent(mode: str) -> Image.Image:
    """A black square on a transparent background (alpha dropped: one black image)."""
    alpha = np.zeros((28, 28), np.uint8)
    alpha[7:21, 7:21] = 255
    alpha[:, :3] = 128
    if mode == "P":
        image = Image.fromarray(np.where(alpha == 255, 1, 0).astype(np.uint8), "P")
        image.putpalette([255, 0, 0, 0, 0, 0])  # index 0 (red) is the transparent one
        image.info["transparency"] = 0
        return image
    black = np.zeros((28, 28, len(mode) - 1), np.uint8)
    return Image.fromarray(np.dstack([black, alpha]).squeeze(), mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_onto_white(mode):
    out = np.asarray(decode_image(encoded(_transparent(mode), "PNG"))).astype(int)
    assert (out[10, 10] == 0).all() and (out[25, 25] == 255).all()
    if mode != "P":  # 50% black over white
        assert (abs(out[10, 0] - 127.5) <= 1).all()


def test_sixteen_bit_greyscale_keeps_its_top_byte_and_cmyk_converts():
    wide = np.array([[0, 255, 256, 32768, 65535]], dtype=np.uint16)
    out = np.asarray(decode_image(encoded(Image.fromarray(wide), "PNG")))
    assert out[0, :, 0].tolist() == [0, 0, 1, 128, 255] and (out[..., 0] == out[..., 2]).all()
    cmyk = noise_image(mode="CMYK")
    assert np.array_equal(np.asarray(decode_image(encoded(cmyk, "TIFF"))),
                          np.asarray(cmyk.convert("RGB")))


def test_exif_rotation_is_applied_once():
    image = noise_image(h=20, w=30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = decode_image(encoded(image, "PNG", exif=exif))
    assert out.size == (20, 30) and "exif" not in out.info
    assert np.array_equal(np.asarray(out), np.asarray(image.transpose(Image.Transpose.ROTATE_270)))


def test_normalised_images_are_marked_and_others_refused():
    out = images_mod.normalize_image(noise_image())
    images_mod.require_normalized([out, resize_to_grid(out)], "test")
    for bad in (noise_image(), out.convert("RGBA"), np.asarray(out)):
        with pytest.raises(TypeError, match="did not go through"):
            images_mod.require_normalized([out, bad], "test")


def test_size_limit_is_checked_before_decoding():
    data = encoded(noise_image(h=10, w=20), "PNG")
    with pytest.raises(images_mod.ImageTooLarge, match=r"is 20x10 \(200 pixels\), over the limit "
                                                       r"of 199"):
        decode_image(data, max_pixels=199)
    assert decode_image(data, max_pixels=200).size == (20, 10)
    from bad_files import bomb_png

    with pytest.raises(images_mod.ImageTooLarge, match="400000000 pixels"):
        decode_image(bomb_png())  # over twice PIL's limit: PIL refuses in open, named as ours
