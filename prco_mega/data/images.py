"""The image pipeline: decode bytes or files to RGB PIL images, resize to the vision patch grid.

Every image the model sees goes through `normalize_image` once (decoded data, synthetic renders):
transparency is composited onto white exactly as vLLM does it, so the learner's processor and the
rollout engine see the same pixels; the result carries a marker that the engine and the learner
check (`require_normalized`) instead of trusting that a caller remembered.

Two decoders: PIL (default) and NVIDIA DALI's CPU decoder (`backend="dali"`), imported only when
asked for; asking for DALI without it installed is an error, never a silent fallback to PIL.
DALI decodes plain RGB and greyscale images; the rest (transparency, 16-bit, CMYK, palettes, EXIF
rotations), which DALI would flatten differently from vLLM, are decoded by PIL.
"""
from __future__ import annotations

import io
import math
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

BACKENDS = ("pil", "dali")
PATCH_MULTIPLE = 28  # Qwen2.5-VL: 14 px patches, merged 2x2 by the projector
DEFAULT_MIN_PIXELS = 4 * 28 * 28
DEFAULT_MAX_PIXELS = 1280 * 28 * 28
MAX_ASPECT = 200  # longer / shorter side; beyond this no grid keeps the image meaningful
PIL_MAX_IMAGE_PIXELS = 89_478_485
"""PIL's decompression-bomb threshold (`Image.MAX_IMAGE_PIXELS`), the default size limit."""
NORMALIZED = "prco_mega.normalized"
"""`Image.info` key set by `normalize_image`; PIL copies `info` through resize, crop and copy."""
WHITE = (255, 255, 255)  # vLLM's default `rgba_background_color`


class ImageTooLarge(ValueError):
    """An image over the configured pixel limit (a likely decompression bomb)."""


def normalize_image(image: Image.Image) -> Image.Image:
    """A new RGB image of what `image` shows, marked as normalised.

    EXIF orientation is applied and transparency (RGBA, LA, PA, or a `transparency` entry in P, L
    or RGB) is composited onto white, both as vLLM does to a PIL image it is given; 16-bit
    greyscale keeps its top byte (PIL's own conversion clips it at 255, a white image); every other
    mode goes through PIL's `convert("RGB")`. `info` is replaced by the marker alone, so no EXIF
    tag is applied twice.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        out = Image.new("RGB", rgba.size, WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
    elif image.mode.startswith("I;16"):
        top_byte = (np.asarray(image, dtype=np.uint16) >> 8).astype(np.uint8)  # [H, W]
        out = Image.fromarray(top_byte, mode="L").convert("RGB")
    else:
        out = image.convert("RGB") if image.mode != "RGB" else image.copy()
    out.info = {NORMALIZED: True}
    return out


def is_normalized(image: Image.Image) -> bool:
    """True when `image` came out of `normalize_image` (or a resize/crop of it) and is still RGB."""
    return image.mode == "RGB" and image.info.get(NORMALIZED) is True


def require_normalized(images, where: str) -> None:
    """Refuse images that skipped `normalize_image`: an engine or processor given one would
    flatten its transparency its own way, and learner and engine would see different pixels."""
    for k, image in enumerate(images):
        if not (isinstance(image, Image.Image) and is_normalized(image)):
            kind = getattr(image, "mode", type(image).__name__)
            raise TypeError(f"{where}: image {k} ({kind}) did not go through "
                            "prco_mega.data.images.normalize_image")


def _read_bytes(src: bytes | bytearray | memoryview | str | Path) -> tuple[bytes, str]:
    """Encoded bytes of `src` and a name for error messages."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), f"<{len(src)} bytes>"
    path = Path(src)
    if not path.is_file():
        raise ValueError(f"image file {str(path)!r} does not exist")
    return path.read_bytes(), str(path)


def decode_image(src: bytes | str | Path, backend: str = "pil",
                 max_pixels: int = PIL_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an encoded image (bytes, or a file path) to a normalised RGB `PIL.Image`.

    The header is read first: an image over `max_pixels` raises `ImageTooLarge` before any pixel
    is decoded. Raises ValueError naming the source when the data is not a decodable image.
    """
    if backend not in BACKENDS:
        raise ValueError(f"image backend ({backend!r}) must be one of {BACKENDS}")
    data, name = _read_bytes(src)
    if not data:
        raise ValueError(f"image {name} is empty")
    with _open_checked(data, name, max_pixels) as image:
        if backend == "dali" and _dali_exact(image):
            return normalize_image(_decode_dali(data, name))
        return _decode_pil(image, name)


def image_size(src: bytes | str | Path, max_pixels: int = PIL_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) from an encoded image's header, no pixel decoded: a cheap check that
    data is an image, before anything heavy. ValueError (or `ImageTooLarge`) as `decode_image`."""
    data, name = _read_bytes(src)
    if not data:
        raise ValueError(f"image {name} is empty")
    with _open_checked(data, name, max_pixels) as image:
        return image.size


def _open_checked(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """The lazily opened image (header only), refused when over `max_pixels`."""
    try:
        with warnings.catch_warnings():  # our limit decides, not PIL's warning threshold
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:  # over twice PIL's limit: refused in open
        raise ImageTooLarge(f"image {name} is too large: {err} (limit {max_pixels}, "
                            "data.max_image_pixels)") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"image {name} cannot be decoded: {err}") from err
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(f"image {name} is {width}x{height} ({width * height} pixels), over "
                            f"the limit of {max_pixels} (data.max_image_pixels)")
    return image


def _dali_exact(image: Image.Image) -> bool:
    """DALI's RGB output equals `normalize_image`'s only for opaque 8-bit RGB/greyscale images
    without an EXIF rotation."""
    opaque = image.mode in ("RGB", "L") and "transparency" not in image.info
    exif = Image.Exif()
    if "exif" in image.info:  # the header's EXIF; `getexif()` would decode a PNG's pixels
        exif.load(image.info["exif"])
    return opaque and exif.get(ExifTags.Base.Orientation, 1) == 1


def _decode_pil(image: Image.Image, name: str) -> Image.Image:
    try:
        image.load()  # decode now: truncated files fail here, not later in a rollout
        return normalize_image(image)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"image {name} cannot be decoded: {err}") from err


class _DaliDecoder:
    """One cached CPU pipeline (batch 1) fed through an external source; rebuilt after errors,
    because a DALI pipeline that raised is no longer usable."""

    def __init__(self) -> None:
        self._pipe = None
        self._lock = threading.Lock()

    @staticmethod
    def _build():
        try:
            from nvidia.dali import fn, pipeline_def, types
        except ImportError as err:
            raise ValueError("image backend 'dali' needs the package nvidia-dali "
                             "(pip install nvidia-dali-cuda130), which is not installed") from err

        @pipeline_def(batch_size=1, num_threads=1, device_id=None, prefetch_queue_depth=1)
        def decode_pipeline():
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            return fn.decoders.image(encoded, device="cpu", output_type=types.RGB)

        pipe = decode_pipeline()
        pipe.build()
        return pipe

    def __call__(self, data: bytes, name: str) -> Image.Image:
        with self._lock:
            if self._pipe is None:
                self._pipe = self._build()
            try:
                self._pipe.feed_input("encoded", [np.frombuffer(data, dtype=np.uint8)])
                (out,) = self._pipe.run()
                pixels = np.array(out.at(0))  # [H, W, 3] uint8
            except (RuntimeError, IndexError) as err:
                self._pipe = None
                raise ValueError(f"image {name} cannot be decoded by DALI: "
                                 f"{str(err).splitlines()[0]}") from err
        return Image.fromarray(pixels, mode="RGB")


_DALI = _DaliDecoder()


def _decode_dali(data: bytes, name: str) -> Image.Image:
    return _DALI(data, name)


def grid_size(height: int, width: int, factor: int = PATCH_MULTIPLE,
              min_pixels: int = DEFAULT_MIN_PIXELS,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Target (height, width), both multiples of `factor`, with min_pixels <= h*w <= max_pixels.

    Each side is first rounded to the nearest multiple of `factor` (at least one); if the area
    then exceeds max_pixels both sides shrink by s = sqrt(h*w / max_pixels) and round down,
    if it is below min_pixels both grow by s = sqrt(min_pixels / (h*w)) and round up, so the
    aspect ratio is kept as well as the grid allows.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size ({height}x{width}) must be positive")
    if max(height, width) / min(height, width) > MAX_ASPECT:
        raise ValueError(f"image aspect ratio of {height}x{width} exceeds {MAX_ASPECT}")
    if not factor * factor <= min_pixels <= max_pixels:
        raise ValueError(f"need factor^2 ({factor * factor}) <= min_pixels ({min_pixels}) "
                         f"<= max_pixels ({max_pixels})")
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        s = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / s / factor) * factor)
        w = max(factor, math.floor(width / s / factor) * factor)
    elif h * w < min_pixels:
        s = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * s / factor) * factor
        w = math.ceil(width * s / factor) * factor
    return h, w


def resize_to_grid(image: Image.Image, factor: int = PATCH_MULTIPLE,
                   min_pixels: int = DEFAULT_MIN_PIXELS,
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """`image` resized (bicubic) to `grid_size(...)`; returned unchanged when already there."""
    h, w = grid_size(image.height, image.width, factor, min_pixels, max_pixels)
    if (h, w) == (image.height, image.width):
        return image
    return image.resize((w, h), Image.Resampling.BICUBIC)
