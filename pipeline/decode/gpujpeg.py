"""JPEG decoding on the GPU for ``--decode gpu``: compressed bytes in, network-sized uint8 batches out, on the device.

The reader's threads read and hash each file and parse its header with Pillow (:func:`inspect`: the
format allowlist and pixel caps of :mod:`pipeline.decode.images`, the EXIF orientation), then hand
over the **bytes** of each JPEG the GPU can decode (:class:`Encoded`); any other file (PNG, CMYK or
MPO JPEGs, ...) is decoded on the CPU there, as without this mode. :class:`GpuDecoder` decodes a
batch of those bytes with a GPU JPEG library, at full size and as stored (orientation is not
applied by the library), and :func:`pipeline.decode.jaxresize.resize_batch` applies the orientation,
the centre crop and Pillow's own resize arithmetic on the device, so only compressed bytes cross
PCIe. A file the GPU library refuses falls back to the CPU decoder, with the CPU decoder's skip
reasons when that fails too.

Libraries, tried in this order for ``--decode gpu`` / ``auto`` (each an optional install, imported
only when the mode is used): nvImageCodec (``pip install nvidia-nvimgcodec-cu12`` or ``-cu13``: batched
nvJPEG, hardware decoder where the GPU has one, DLPack into JAX without a copy) and
``torchvision.io.decode_jpeg(device="cuda")`` (where PyTorch is installed anyway). ``pillow`` is the
reference: the same interface on the CPU (full-size decode, no draft), for tests and parity figures.
Pixels of GPU-decoded JPEGs differ from Pillow's only by the JPEG IDCT and chroma upsampling (and
Pillow's DCT-scaled decode of very large JPEGs); the decoder is recorded in the feature spec.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..errors import ImageError, UsageError
from ..preprocess import Preprocess
from .images import _DECODE_ERRORS, _open, _orientation, crop_box, decode
from .jaxresize import resize_batch, upright_size

GPU_LIBRARIES = ("nvimgcodec", "torchvision")
DECODERS = GPU_LIBRARIES + ("pillow-full",)
BATCH_PIXELS = 256_000_000  # decoded pixels on the device at once (768 MB of RGB): bigger batches are split
INSTALL_HINT = ("pip install nvidia-nvimgcodec-cu12 (or -cu13 for CUDA 13), or install torchvision with CUDA; "
                "JAX must see the GPU (pip install 'jax[cuda12]')")


@dataclass(frozen=True)
class Encoded:
    """A JPEG's bytes, checked on the CPU and ready for the GPU decoder: what the reader hands over."""

    data: bytes
    height: int  # as stored, before the EXIF orientation is applied
    width: int
    orientation: int = 1


def inspect(data: bytes, pre: Preprocess, path="<bytes>", notes: list | None = None):
    """A JPEG the GPU decodes -> :class:`Encoded` (its header parsed, nothing decoded); any other image ->
    the uint8 array :func:`pipeline.decode.images.decode` gives (decoded here, on the CPU). Raises
    :class:`~pipeline.errors.ImageError` as ``decode`` does for files no decoder may open."""
    im = _open(data, path)  # the format allowlist and the pixel caps, from the header alone
    if im.format == "JPEG" and im.mode in ("RGB", "L"):  # CMYK/YCCK and MPO: the CPU decoder's exact handling
        return Encoded(data, im.height, im.width, _orientation(im))
    return decode(data, pre, path, notes)


class PillowJpeg:
    """The reference decoder: Pillow at full size, orientation not applied, on the CPU (tests, parity)."""

    name = "pillow-full"

    def decode(self, blobs: list[bytes]) -> list:
        out = []
        for data in blobs:
            try:
                with Image.open(io.BytesIO(data)) as im:
                    out.append(np.asarray(im.convert("RGB")))
            except _DECODE_ERRORS:
                out.append(None)
        return out


class NvImageCodecJpeg:
    """nvImageCodec's batched decoder (nvJPEG; the hardware JPEG engine where the GPU has one)."""

    name = "nvimgcodec"

    def __init__(self):
        from nvidia import nvimgcodec

        self._decoder = nvimgcodec.Decoder()
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.RGB,
                                               allow_any_depth=False)

    def decode(self, blobs: list[bytes]) -> list:
        return list(self._decoder.decode(blobs, params=self._params))  # CUDA arrays (or None): jaxresize.pad_stack


class TorchvisionJpeg:
    """``torchvision.io.decode_jpeg`` on the CUDA device (nvJPEG), batched."""

    name = "torchvision"

    def __init__(self):
        import torch

        if not torch.cuda.is_available():
            raise ImportError("torch sees no CUDA device")

    def decode(self, blobs: list[bytes]) -> list:
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.from_numpy(np.frombuffer(b, np.uint8).copy()) for b in blobs]
        try:
            decoded = decode_jpeg(tensors, mode=ImageReadMode.RGB, device="cuda")
        except RuntimeError:  # one bad file fails the batch: decode one by one to find it
            decoded = [self._one(t) for t in tensors]
        return [None if t is None else t.permute(1, 2, 0) for t in decoded]  # (H, W, 3) views: jaxresize.pad_stack

    @staticmethod
    def _one(tensor):
        from torchvision.io import ImageReadMode, decode_jpeg

        try:
            return decode_jpeg(tensor, mode=ImageReadMode.RGB, device="cuda")
        except RuntimeError:
            return None


_CLASSES = {"nvimgcodec": NvImageCodecJpeg, "torchvision": TorchvisionJpeg, "pillow-full": PillowJpeg}


def jax_on_gpu() -> bool:
    try:
        import jax

        return jax.default_backend() in ("gpu", "cuda", "rocm")
    except ImportError:
        return False


def find_library(name: str | None = None):
    """The JPEG decoder `name` (one of :data:`DECODERS`), or the first GPU library that loads when None;
    None when no GPU library is usable (``--decode auto`` then decodes on the CPU)."""
    if name is not None:
        if name not in _CLASSES:
            raise UsageError(f"unknown JPEG decoder {name!r}; choose one of {', '.join(DECODERS)}")
        if name in GPU_LIBRARIES and not jax_on_gpu():
            raise UsageError(f"--decode gpu needs JAX on a CUDA GPU, and JAX sees none here: {INSTALL_HINT}")
        try:
            return _CLASSES[name]()
        except ImportError as e:
            raise UsageError(f"the GPU JPEG decoder {name} cannot be used ({e}): {INSTALL_HINT}") from e
    if not jax_on_gpu():
        return None
    for lib in GPU_LIBRARIES:
        try:
            return _CLASSES[lib]()
        except (ImportError, RuntimeError, OSError):
            continue
    return None


class GpuDecoder:
    """Batches of :class:`Encoded` JPEGs (and arrays the CPU decoded already) -> one uint8 device batch."""

    def __init__(self, library, pre: Preprocess, batch_pixels: int = BATCH_PIXELS):
        self.library, self.pre, self.batch_pixels = library, pre, int(batch_pixels)

    @property
    def name(self) -> str:
        return self.library.name

    def __call__(self, items: list, paths: list) -> tuple[object, list[tuple[int, ImageError]], list[str]]:
        """(batch (n_ok, h, w, 3) uint8 on the device, [(index, ImageError)] of items no decoder could
        read, [index of items the CPU decoded after the GPU library refused them]) for `items` in order."""
        import jax.numpy as jnp

        encoded = [i for i, it in enumerate(items) if isinstance(it, Encoded)]
        decoded = dict(zip(encoded, self._decode([items[i] for i in encoded])))
        failed, fell_back, ready, sources = [], [], {}, {}
        for i in encoded:
            it, image = items[i], decoded[i]
            if image is None or tuple(image.shape[:2]) != (it.height, it.width):
                try:  # the GPU library refused it (or read another size than the header says): the CPU decoder
                    ready[i] = decode(it.data, self.pre, paths[i])
                    fell_back.append(i)
                except ImageError as e:
                    failed.append((i, e))
            else:
                sources[i] = image
        if sources:
            order = sorted(sources)
            boxes = [crop_box(*reversed(upright_size(items[i].height, items[i].width, items[i].orientation)), self.pre)
                     for i in order]
            resized = resize_batch([sources[i] for i in order], boxes, self.pre, [items[i].orientation for i in order])
            if len(order) + len(failed) == len(items):  # every image read was decoded on the GPU: the batch as it is
                return resized, failed, fell_back
            ready.update({i: resized[j] for j, i in enumerate(order)})
        for i, it in enumerate(items):
            if not isinstance(it, Encoded):
                ready[i] = it
        keep = [i for i in range(len(items)) if i in ready]
        batch = jnp.stack([jnp.asarray(ready[i]) for i in keep]) if keep else jnp.zeros((0, *self.pre.size, 3), jnp.uint8)
        return batch, failed, fell_back

    def _decode(self, items: list[Encoded]) -> list:
        """The library's decode in slices of at most `batch_pixels` decoded pixels (memory on the device)."""
        out, start, pixels = [], 0, 0
        for n, it in enumerate(items):
            pixels += it.height * it.width
            if pixels > self.batch_pixels and n > start:
                out += self.library.decode([x.data for x in items[start:n]])
                start, pixels = n, it.height * it.width
        return out + (self.library.decode([x.data for x in items[start:]]) if start < len(items) else [])
