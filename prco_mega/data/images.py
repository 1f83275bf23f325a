"""The image pipeline: decode bytes or files to RGB PIL images, resize to the vision patch grid.

Two decoders: PIL (default) and NVIDIA DALI's CPU decoder (`backend="dali"`), imported only when
asked for; asking for DALI without it installed is an error, never a silent fallback to PIL.
"""
from __future__ import annotations

import io
import math
import threading
from pathlib import Path

from PIL import Image, UnidentifiedImageError

BACKENDS = ("pil", "dali")
PATCH_MULTIPLE = 28  # Qwen2.5-VL: 14 px patches, merged 2x2 by the projector
DEFAULT_MIN_PIXELS = 4 * 28 * 28
DEFAULT_MAX_PIXELS = 1280 * 28 * 28
MAX_ASPECT = 200  # longer / shorter side; beyond this no grid keeps the image meaningful


def _read_bytes(src: bytes | bytearray | memoryview | str | Path) -> tuple[bytes, str]:
    """Encoded bytes of `src` and a name for error messages."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), f"<{len(src)} bytes>"
    path = Path(src)
    if not path.is_file():
        raise ValueError(f"image file {str(path)!r} does not exist")
    return path.read_bytes(), str(path)


def decode_image(src: bytes | str | Path, backend: str = "pil") -> Image.Image:
    """Decode an encoded image (bytes, or a file path) to an RGB `PIL.Image`.

    Raises ValueError naming the source when the data is not a decodable image.
    """
    if backend not in BACKENDS:
        raise ValueError(f"image backend ({backend!r}) must be one of {BACKENDS}")
    data, name = _read_bytes(src)
    if not data:
        raise ValueError(f"image {name} is empty")
    if backend == "dali":
        return _decode_dali(data, name)
    return _decode_pil(data, name)


def _decode_pil(data: bytes, name: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode now: truncated files fail here, not later in a rollout
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
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
        import numpy as np

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
