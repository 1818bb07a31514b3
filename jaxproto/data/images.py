"""Image decoding for every dataset: PNG/JPEG/BMP (Pillow), DICOM (pydicom), synthetic and prepared.

``load_image`` always returns ``uint8`` HxWxC so transforms need no per-dataset cases:

- 8-bit files are returned as stored (converted to L or RGB).
- 16-bit PNGs (COVIDx mixes bit depths) are scaled by their effective bit depth,
  ``x * 255 / (2**b - 1)`` with ``b = max(8, ceil(log2(max + 1)))``, so 12-bit data stored in 16
  bits is not rendered nearly black.
- DICOM (VinDr-CXR): modality LUT (RescaleSlope/Intercept), VOI LUT or window when the file has
  one, then min-max to [0, 1]; MONOCHROME1 is inverted (data_formats.md §6, §10.2).
- paths with a scheme are decoded by ``SCHEME_DECODERS``: ``synthetic://...`` paths are
  rendered by ``jaxproto.data.procedural`` (a pure function of the path), and
  ``arrayrecord://<file>#<i>`` paths read record ``i`` of a prepared ArrayRecord file.

Unreadable or truncated files raise ``DataError`` naming the file.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable, Sequence

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from jaxproto.common.errors import DataError
from jaxproto.data import procedural

DICOM_EXTS = (".dcm", ".dicom")


class ImageError(DataError):
    """An image that cannot be read (missing, truncated, corrupt, unsupported); ``path`` names
    it, so the input pipeline can tell which record it belongs to."""

    def __init__(self, path: str, message: str):
        super().__init__(message)
        self.path = path

    def __reduce__(self):  # picklable across grain worker processes
        return type(self), (self.path, str(self))


ARRAYRECORD_SCHEME = "arrayrecord://"


def _to_channels(img: np.ndarray, channels: int, path: str) -> np.ndarray:
    if img.ndim == 2:
        img = img[:, :, None]
    if channels == 1:
        if img.shape[2] == 1:
            return img
        # ITU-R 601 luma, as Pillow's convert("L").
        grey = img[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(np.rint(grey), 0, 255).astype(np.uint8)[:, :, None]
    if channels == 3:
        if img.shape[2] == 1:
            return np.repeat(img, 3, axis=2)
        return np.ascontiguousarray(img[:, :, :3])
    raise ValueError(f"load_image({path!r}): channels must be 1 or 3, got {channels}")


def _scale_high_bit_depth(x: np.ndarray) -> np.ndarray:
    top = int(x.max()) if x.size else 0
    bits = max(8, math.ceil(math.log2(top + 1))) if top > 0 else 8
    return np.clip(np.rint(x.astype(np.float64) * 255.0 / (2**bits - 1)), 0, 255).astype(np.uint8)


def _load_pil(path: str, channels: int) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im)
                if arr.min() < 0:
                    raise ImageError(path, f"{path}: negative pixel values in a {mode} image")
                arr = _scale_high_bit_depth(arr)
            elif mode in ("L", "RGB"):
                arr = np.asarray(im)
            elif mode == "F":
                raise ImageError(path, f"{path}: floating-point images are not supported")
            else:
                arr = np.asarray(im.convert("RGB" if channels == 3 else "L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageError):
            raise
        raise ImageError(path, f"{path}: cannot decode image ({type(e).__name__}: {e})") from e
    return _to_channels(arr, channels, path)


def _load_dicom(path: str, channels: int) -> np.ndarray:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types for truncated/invalid files
        raise ImageError(path, f"{path}: cannot read DICOM ({type(e).__name__}: {e})") from e
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageError(
            path, f"{path}: multi-frame DICOM ({ds.NumberOfFrames} frames), expected one"
        )
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise ImageError(
                path,
                f"{path}: unsupported DICOM PhotometricInterpretation {photometric!r} "
                f"with pixel array {pixels.shape} {pixels.dtype}",
            )
        return _to_channels(pixels, channels, path)
    x = apply_modality_lut(pixels, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        x = apply_voi_lut(x, ds)
    x = np.asarray(x, np.float32)
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    if photometric == "MONOCHROME1":
        x = 1.0 - x
    return _to_channels(np.rint(x * 255.0).astype(np.uint8), channels, path)


@functools.lru_cache(maxsize=16)
def _array_record_reader(path: str):
    from array_record.python.array_record_module import ArrayRecordReader

    return ArrayRecordReader(path)


def decode_bytes(data: bytes, where: str, channels: int = 3) -> np.ndarray:
    """Decodes an encoded image (PNG bytes from a prepared ArrayRecord file)."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageError(where, f"{where}: cannot decode the stored image bytes")
    if arr.ndim == 3:
        arr = arr[:, :, ::-1]  # cv2 stores BGR
    return _to_channels(np.ascontiguousarray(arr), channels, where)


def _load_prepared(path: str, channels: int) -> np.ndarray:
    file, sep, idx = path[len(ARRAYRECORD_SCHEME) :].rpartition("#")
    if not sep or not idx.isdigit():
        raise ImageError(path, f"{path}: expected arrayrecord://<file>#<record number>")
    if not os.path.isfile(file):
        raise ImageError(path, f"{path}: ArrayRecord file {file} not found")
    reader = _array_record_reader(file)
    i = int(idx)
    if i >= reader.num_records():
        raise ImageError(path, f"{path}: record {i} out of range ({reader.num_records()} records)")
    return decode_bytes(reader.read([i])[0], path, channels)


def _load_procedural(path: str, channels: int) -> np.ndarray:
    return _to_channels(procedural.render_path(path), channels, path)


SCHEME_DECODERS: dict[str, Callable[[str, int], np.ndarray]] = {
    procedural.SCHEME: _load_procedural,
    ARRAYRECORD_SCHEME: _load_prepared,
}
"""Path prefix -> ``decoder(path, channels)`` for images that are not plain files."""


def _scheme_decoder(path: str) -> Callable[[str, int], np.ndarray] | None:
    for scheme, decoder in SCHEME_DECODERS.items():
        if path.startswith(scheme):
            return decoder
    return None


def load_image(path: str, channels: int = 3) -> np.ndarray:
    """Decodes ``path`` to ``uint8`` HxWx``channels`` (1 or 3); DataError if unreadable."""
    if channels not in (1, 3):
        raise ValueError(f"load_image({path!r}): channels must be 1 or 3, got {channels}")
    decoder = _scheme_decoder(path)
    if decoder is not None:
        return decoder(path, channels)
    if not os.path.isfile(path):
        raise ImageError(path, f"{path}: image file not found")
    if path.lower().endswith(DICOM_EXTS):
        return _load_dicom(path, channels)
    return _load_pil(path, channels)


def image_size(path: str) -> tuple[int, int]:
    """(width, height) of an image, reading only the header where the format allows."""
    if _scheme_decoder(path) is not None:
        h, w = load_image(path, channels=1).shape[:2]
        return int(w), int(h)
    if not os.path.isfile(path):
        raise ImageError(path, f"{path}: image file not found")
    if path.lower().endswith(DICOM_EXTS):
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            return int(ds.Columns), int(ds.Rows)
        except Exception as e:
            raise ImageError(
                path, f"{path}: cannot read DICOM header ({type(e).__name__}: {e})"
            ) from e
    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(path, f"{path}: cannot read image header ({type(e).__name__}: {e})") from e


def dicom_tags(path: str) -> dict[str, str]:
    """``{"modality": Modality (0008,0060), "body_part": BodyPartExamined (0018,0015)}`` of a
    DICOM file, upper-case, each only where the header has it; ``{}`` for other formats."""
    if not path.lower().endswith(DICOM_EXTS) or not os.path.isfile(path):
        return {}
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as e:  # pydicom raises many types for truncated/invalid files
        raise ImageError(path, f"{path}: cannot read DICOM header ({type(e).__name__}: {e})") from e
    tags = {"modality": ds.get("Modality", ""), "body_part": ds.get("BodyPartExamined", "")}
    return {k: str(v).strip().upper() for k, v in tags.items() if str(v or "").strip()}


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom")
LIST_FILE_EXTENSIONS = (".txt", ".lst", ".list")


def expand_image_paths(items: Sequence[str], skip_suffixes: Sequence[str] = ()) -> list[str]:
    """Every image named by ``items``, in order: image files as given, folders expanded
    (recursively, sorted), and list files (``.txt``: one path per line, relative to the list's
    folder). Image stems ending in ``skip_suffixes`` (e.g. ISIC's ``_superpixels``) are left
    out of folders. The one image lister of the project (predict, retrieve index, studio)."""
    out: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = walk_images(item, skip_suffixes=skip_suffixes)
            if not found:
                raise DataError(f"{item}: no image files ({', '.join(IMAGE_EXTENSIONS)}) found")
            out.extend(found)
        elif item.lower().endswith(LIST_FILE_EXTENSIONS) and os.path.isfile(item):
            out.extend(_read_list_file(item))
        elif os.path.isfile(item):
            out.append(item)
        else:
            raise DataError(f"{item}: no such image file, folder or list file")
    if not out:
        raise DataError("no images given")
    return out


def walk_images(
    folder: str, exts: Sequence[str] = IMAGE_EXTENSIONS, skip_suffixes: Sequence[str] = ()
) -> list[str]:
    """Sorted paths of the image files below ``folder`` (any depth) with extensions ``exts``
    (case-insensitive), leaving out stems that end in ``skip_suffixes``."""
    exts = tuple(e.lower() for e in exts)
    skip = tuple(skip_suffixes)
    return sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(exts) and not (skip and os.path.splitext(name)[0].endswith(skip))
    )


def _read_list_file(path: str) -> list[str]:
    base = os.path.dirname(os.path.abspath(path))
    paths = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            full = line if os.path.isabs(line) else os.path.join(base, line)
            if not os.path.isfile(full):
                raise DataError(f"{path}:{line_no}: image file {full!r} does not exist")
            paths.append(full)
    if not paths:
        raise DataError(f"{path}: the list file names no images")
    return paths
