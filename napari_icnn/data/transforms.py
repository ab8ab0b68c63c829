"""Fundus preprocessing and the MONAI transforms built on it.

:func:`preprocess` is the one preprocessing path (training, explanation, batch inference):
crop the FOV's bounding square (a rimless field's centred bounding square), resize anti-aliased,
normalise each channel inside the field of view (of any shape) to zero mean and unit standard deviation, 0 outside. Normalising per photograph is what carries
a model across cameras (and from synthetic to real photographs): it removes exposure and
colour balance while keeping the structure.

The MONAI transforms are dictionary (``keys``-based) transforms: :class:`LoadFundusd` and
:class:`FundusPreprocessd` are deterministic (cached by the data sets); :func:`train_augmentation`
is the random part, applied after the cache. MONAI and torch are imported only by the functions
that need them, so importing this module for :func:`preprocess` stays cheap.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np

from napari_icnn.data.fov import FOV, find_fov
from napari_icnn.data.geometry import Geometry
from napari_icnn.errors import InputError

__all__ = [
    "LANDMARKS",
    "preprocess",
    "load_rgb",
    "model_fov_mask",
    "read_mask",
    # MONAI subclasses, built on first access (see the module's __getattr__)
    "LoadFundusd",  # noqa: F822
    "FundusPreprocessd",  # noqa: F822
    "RandFundusAffined",  # noqa: F822
    "RandFundusColourd",  # noqa: F822
    "train_augmentation",
]

LANDMARKS: tuple[str, ...] = ("optic_disc", "fovea")
"""Landmark names carried through preprocessing, in this order."""

# A channel flatter than this (0..255 units) is not scaled up into noise.
_MIN_STD = 1.0
# A resampled mask value at or above this marks a pixel: a single-pixel lesion sampled anywhere
# within half a pixel of its centre still reaches 0.25 under bilinear interpolation.
_MASK_LEVEL = 0.25


def preprocess(rgb: np.ndarray, size: int, fov: FOV | None = None) -> tuple[np.ndarray, Geometry, np.ndarray]:
    """Crop to the FOV's bounding square, resize and normalise one photograph.

    The square is :meth:`FOV.bounding_square`: a circle's (clipped or not) bounding square, or for a
    rimless photograph the frame's centred bounding square, padded with 0 beyond the scan.

    Parameters
    ----------
    rgb
        ``(H, W, 3)`` uint8 RGB photograph.
    size
        Side of the model input.
    fov
        The field of view; found with :func:`~napari_icnn.data.fov.find_fov` when not given.

    Returns
    -------
    image
        ``(3, size, size)`` float32: per channel zero mean and unit std inside the FOV, 0 outside.
    geometry
        The crop and resize, invertible (:class:`~napari_icnn.data.geometry.Geometry`).
    fov_mask
        ``(size, size)`` bool: model pixels inside the field of view (any shape) and inside the scan.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image; got shape {rgb.shape} dtype {rgb.dtype}")
    if int(size) != size or size < 8:
        raise ValueError(f"size must be an integer >= 8; got {size!r}")
    if fov is None:
        fov = find_fov(rgb)
    geom = Geometry.from_fov(fov, rgb.shape[:2], int(size))
    img = geom.image_to_model(rgb)  # (S, S, 3) float32, 0..255
    inside = model_fov_mask(fov, geom)
    px = img[inside] if inside.sum() >= 16 else img.reshape(-1, 3)
    mean = px.mean(axis=0)
    std = np.maximum(px.std(axis=0), _MIN_STD)
    out = (img - mean) / std
    out[~inside] = 0.0
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32), geom, inside


def model_fov_mask(fov: FOV, geometry: Geometry) -> np.ndarray:
    """``(size, size)`` bool: model pixels whose centres fall in the field of view and inside the scan.

    The field of any shape (:meth:`FOV.contains`): a clipped or rimless field's pixels in the frame are
    inside, the padding beyond the frame outside. A rim marker shows no retina: it stays outside, as
    it always was for the model.
    """
    k = np.arange(geometry.size, dtype=np.float64)
    xs = (k + 0.5) * geometry.scale + geometry.x0 - 0.5
    ys = (k + 0.5) * geometry.scale + geometry.y0 - 0.5
    h, w = geometry.scan_shape
    in_x = (xs >= -0.5) & (xs < w - 0.5)
    in_y = (ys >= -0.5) & (ys < h - 0.5)
    return fov.contains(xs[None, :], ys[:, None], marker=False) & in_y[:, None] & in_x[None, :]


def read_mask(path: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a binary mask file as ``(H, W)`` bool: set where any channel is above 0.

    Masks stored as red on black (IDRiD's TIFFs read as 76 after grey conversion) and 0/255
    masks both come out right; a threshold at 128 would erase the former.

    Raises
    ------
    InputError
        Unreadable file, or its size differs from ``shape`` (the photograph's).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB") if im.mode in ("P", "PA") else im)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise InputError(path, f"cannot read the mask: {exc}") from None
    mask = arr > 0 if arr.ndim == 2 else np.any(arr[..., :3] > 0, axis=2)
    if shape is not None and mask.shape != tuple(shape):
        raise InputError(
            path,
            f"mask is {mask.shape[1]}x{mask.shape[0]} pixels but its photograph is {shape[1]}x{shape[0]}",
        )
    return mask


def load_rgb(path: str, frame: int | None) -> np.ndarray:
    """The ``(H, W, 3)`` uint8 pixels of a photograph (frame ``frame`` of a multi-frame file, 0-based); an
    :class:`~napari_icnn.errors.InputError` naming the file for a frame it does not have."""
    from napari_icnn.data.image_io import iter_images

    index = 0 if frame is None else int(frame)
    count = 0
    # Frames are decoded one at a time: stop at the one wanted.
    for count, image in enumerate(iter_images(path), start=1):
        if count - 1 == index:
            return image.pixels
    raise InputError(path, f"frame {index} requested but the file has {count} frame(s)")


# -- MONAI dictionary transforms ----------------------------------------------------------------


def _make_classes() -> dict[str, type]:
    from monai.transforms import MapTransform, RandomizableTransform

    class LoadFundusd(MapTransform):
        """Load a record's photograph (``data[key]`` = path) as ``(H, W, 3)`` uint8 RGB.

        The frame is ``data["frame"]`` (multi-frame DICOM; first frame when absent). Masks in
        ``data[mask_key]`` (``{part_key: path}``) are read with :func:`read_mask` into
        ``{part_key: (H, W) bool}``, checked against the photograph's size.
        """

        def __init__(
            self,
            keys: Any = "image",
            mask_key: str = "masks",
            frame_key: str = "frame",
            allow_missing_keys: bool = False,
        ) -> None:
            super().__init__(keys, allow_missing_keys)
            self.mask_key = mask_key
            self.frame_key = frame_key

        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            d = dict(data)
            shape = None
            for key in self.key_iterator(d):
                d[key] = load_rgb(str(d[key]), d.get(self.frame_key))
                shape = d[key].shape[:2]
            paths = d.get(self.mask_key)
            if isinstance(paths, Mapping):
                d[self.mask_key] = {part: read_mask(str(p), shape) for part, p in paths.items()}
            return d

    class FundusPreprocessd(MapTransform):
        """:func:`preprocess` the photograph in ``data[key]`` and carry masks and landmarks along.

        Afterwards ``data[key]`` is ``(3, S, S)`` float32, ``data["geometry"]`` the
        :class:`Geometry` as a dict, ``data["fov"]`` ``(1, S, S)`` uint8. Masks
        (``data[mask_key]``, ``{part: (H, W) bool}``) become ``(P, S, S)`` uint8 in the order of
        ``mask_parts`` (a part without a mask is all 0: absent), each through
        :meth:`Geometry.mask_to_model`; landmarks (``data[landmark_key]``, ``{name: (x, y)}``
        in scan pixels) become ``{name: (2,) float32}`` model pixels for every name in
        :data:`LANDMARKS`, NaN when unknown. One image key only: the geometry is the image's.
        """

        def __init__(
            self,
            keys: Any = "image",
            size: int = 512,
            mask_parts: Sequence[str] = (),
            mask_key: str = "masks",
            landmark_key: str = "landmarks",
            allow_missing_keys: bool = False,
        ) -> None:
            super().__init__(keys, allow_missing_keys)
            if len(self.keys) != 1:
                raise ValueError(f"FundusPreprocessd takes one image key; got {self.keys}")
            self.size = int(size)
            self.mask_parts = tuple(mask_parts)
            self.mask_key = mask_key
            self.landmark_key = landmark_key

        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            d = dict(data)
            for key in self.key_iterator(d):
                image, geom, inside = preprocess(d[key], self.size)
                d[key] = image
                d["geometry"] = geom.to_dict()
                d["fov"] = inside[None].astype(np.uint8)
                if self.mask_parts:
                    found = d.get(self.mask_key) or {}
                    stack = np.zeros((len(self.mask_parts), self.size, self.size), np.uint8)
                    for i, part in enumerate(self.mask_parts):
                        if part in found:
                            stack[i] = geom.mask_to_model(found[part])
                    d[self.mask_key] = stack
                else:
                    d.pop(self.mask_key, None)
                known = d.get(self.landmark_key) or {}
                landmarks = {}
                for name in LANDMARKS:
                    xy = known.get(name)
                    landmarks[name] = (
                        geom.to_model(np.asarray(xy, np.float64))[0].astype(np.float32)
                        if xy is not None
                        else np.full(2, np.nan, np.float32)
                    )
                d[self.landmark_key] = landmarks
            return d

    class RandFundusAffined(RandomizableTransform, MapTransform):
        """Random horizontal flip, rotation and scaling about the image centre, applied identically
        to the image, the FOV, the masks and the landmarks.

        All rasters are interpolated bilinearly; binary ones (``levels``: key -> level) are then
        thresholded, by default the FOV at 0.5 and masks at 0.25 so that a single-pixel lesion
        survives any rotation. Landmarks are mapped with the same matrix, so they stay on their
        parts. The flip happens with ``flip_prob``; rotation and scaling with ``prob``.
        """

        def __init__(
            self,
            keys: Any = ("image", "fov", "masks"),
            prob: float = 0.9,
            flip_prob: float = 0.5,
            rotate_deg: float = 15.0,
            scale: tuple[float, float] = (0.9, 1.1),
            levels: Mapping[str, float] | None = None,
            landmark_key: str = "landmarks",
            allow_missing_keys: bool = True,
        ) -> None:
            MapTransform.__init__(self, keys, allow_missing_keys)
            RandomizableTransform.__init__(self, prob)
            # Keys holding binary rasters, with the level at which a resampled value counts as set.
            self.levels = dict({"fov": 0.5, "masks": _MASK_LEVEL} if levels is None else levels)
            self.flip_prob = float(flip_prob)
            self.rotate_deg = float(rotate_deg)
            self.scale = (float(scale[0]), float(scale[1]))
            self.landmark_key = landmark_key
            self._flip = False
            self._angle = 0.0
            self._zoom = 1.0

        def randomize(self, data: Any = None) -> None:
            super().randomize(None)
            self._flip = bool(self.R.rand() < self.flip_prob)
            self._angle = math.radians(self.R.uniform(-self.rotate_deg, self.rotate_deg))
            self._zoom = float(self.R.uniform(*self.scale))

        def matrix(self, size: int) -> np.ndarray:
            """3x3 forward matrix on model (x, y) pixel-centre coordinates for the last draw."""
            c = (size - 1) / 2
            f = -1.0 if self._flip else 1.0
            if not self._do_transform:
                rot, zoom = 0.0, 1.0
            else:
                rot, zoom = self._angle, self._zoom
            cos, sin = math.cos(rot) * zoom, math.sin(rot) * zoom
            a = np.array([[cos * f, -sin, 0.0], [sin * f, cos, 0.0], [0.0, 0.0, 1.0]])
            t = np.array([[1.0, 0.0, c], [0.0, 1.0, c], [0.0, 0.0, 1.0]])
            t_inv = np.array([[1.0, 0.0, -c], [0.0, 1.0, -c], [0.0, 0.0, 1.0]])
            return t @ a @ t_inv

        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            import torch
            import torch.nn.functional as F

            d = dict(data)
            self.randomize()
            keys = list(self.key_iterator(d))
            if not keys:
                return d
            size = int(np.asarray(d[keys[0]].shape)[-1])
            fwd = self.matrix(size)
            if np.allclose(fwd, np.eye(3)):
                return d
            inv = np.linalg.inv(fwd)
            k = torch.arange(size, dtype=torch.float64)
            yy, xx = torch.meshgrid(k, k, indexing="ij")
            inv_t = torch.from_numpy(inv)
            sx = inv_t[0, 0] * xx + inv_t[0, 1] * yy + inv_t[0, 2]
            sy = inv_t[1, 0] * xx + inv_t[1, 1] * yy + inv_t[1, 2]
            # grid_sample with align_corners=False: pixel centre x sits at (2x + 1) / size - 1.
            grid = torch.stack([(2 * sx + 1) / size - 1, (2 * sy + 1) / size - 1], dim=-1)[None].float()
            for key in keys:
                src = torch.as_tensor(d[key])
                moved = F.grid_sample(
                    src.float()[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
                )[0]
                if key in self.levels:
                    moved = (moved >= self.levels[key]).to(src.dtype)
                d[key] = moved
            lm = d.get(self.landmark_key)
            if isinstance(lm, Mapping):
                out = {}
                for name, xy in lm.items():
                    p = np.asarray(xy.numpy() if torch.is_tensor(xy) else xy, np.float64)
                    q = fwd[:2, :2] @ p + fwd[:2, 2]
                    out[name] = (
                        torch.as_tensor(q.astype(np.float32)) if torch.is_tensor(xy) else q.astype(np.float32)
                    )
                d[self.landmark_key] = out
            return d

    class RandFundusColourd(RandomizableTransform, MapTransform):
        """Random brightness, contrast, gamma and saturation jitter on a normalised fundus image,
        inside the FOV (``data[fov_key]``) only; outside stays 0."""

        def __init__(
            self,
            keys: Any = "image",
            prob: float = 0.8,
            brightness: float = 0.2,
            contrast: tuple[float, float] = (0.8, 1.2),
            gamma: tuple[float, float] = (0.8, 1.25),
            saturation: tuple[float, float] = (0.7, 1.3),
            fov_key: str = "fov",
            allow_missing_keys: bool = False,
        ) -> None:
            MapTransform.__init__(self, keys, allow_missing_keys)
            RandomizableTransform.__init__(self, prob)
            self.brightness = float(brightness)
            self.contrast = contrast
            self.gamma = gamma
            self.saturation = saturation
            self.fov_key = fov_key
            self._params = (0.0, 1.0, 1.0, 1.0)

        def randomize(self, data: Any = None) -> None:
            super().randomize(None)
            self._params = (
                float(self.R.uniform(-self.brightness, self.brightness)),
                float(self.R.uniform(*self.contrast)),
                float(math.exp(self.R.uniform(math.log(self.gamma[0]), math.log(self.gamma[1])))),
                float(self.R.uniform(*self.saturation)),
            )

        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            import torch

            d = dict(data)
            self.randomize()
            if not self._do_transform:
                return d
            shift, contrast, gamma, saturation = self._params
            for key in self.key_iterator(d):
                x = torch.as_tensor(d[key]).float()
                fov = d.get(self.fov_key)
                inside = (
                    (torch.as_tensor(fov) > 0)
                    if fov is not None
                    else torch.ones_like(x[:1], dtype=torch.bool)
                )
                grey = x.mean(dim=0, keepdim=True)
                x = grey + saturation * (x - grey)
                lo = x.amin(dim=(1, 2), keepdim=True)
                hi = x.amax(dim=(1, 2), keepdim=True)
                span = (hi - lo).clamp_min(1e-6)
                x = ((x - lo) / span).clamp(0, 1) ** gamma * span + lo
                x = x * contrast + shift
                d[key] = (x * inside).to(torch.float32)
            return d

    class _MaskOutsided(MapTransform):
        """Zero the image outside the FOV again (blur and noise spill over the rim)."""

        def __init__(self, keys: Any = "image", fov_key: str = "fov") -> None:
            super().__init__(keys, allow_missing_keys=True)
            self.fov_key = fov_key

        def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
            import torch

            d = dict(data)
            fov = d.get(self.fov_key)
            if fov is None:
                return d
            inside = torch.as_tensor(fov) > 0
            for key in self.key_iterator(d):
                d[key] = torch.as_tensor(d[key]).float() * inside
            return d

    return {
        "LoadFundusd": LoadFundusd,
        "FundusPreprocessd": FundusPreprocessd,
        "RandFundusAffined": RandFundusAffined,
        "RandFundusColourd": RandFundusColourd,
        "_MaskOutsided": _MaskOutsided,
    }


def train_augmentation(size: int):
    """The random training augmentation, a MONAI ``Compose``.

    Horizontal flip, rotation within ±15° and scaling 0.9–1.1 (image, FOV, masks and landmarks
    moved together); brightness, contrast, gamma and saturation jitter; slight Gaussian blur and
    noise; the image stays 0 outside the (moved) FOV. Expects the output of
    :class:`FundusPreprocessd` at ``size``.
    """
    from monai.transforms import Compose, RandGaussianNoised, RandGaussianSmoothd

    c = _classes()
    # Blur in model pixels grows with the input side so it means the same on the retina.
    s = max(size / 512, 0.25)
    return Compose(
        [
            c["RandFundusAffined"](keys=("image", "fov", "masks"), allow_missing_keys=True),
            c["RandFundusColourd"](keys="image"),
            RandGaussianSmoothd(
                keys="image", sigma_x=(0.25 * s, 1.0 * s), sigma_y=(0.25 * s, 1.0 * s), prob=0.2
            ),
            RandGaussianNoised(keys="image", prob=0.2, std=0.05),
            c["_MaskOutsided"](keys="image"),
        ]
    )


_LAZY = ("LoadFundusd", "FundusPreprocessd", "RandFundusAffined", "RandFundusColourd", "_MaskOutsided")
_CLASSES: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    # The transform classes subclass MONAI's and are built on first access: explanation needs
    # only preprocess(), and MONAI's import would add seconds to the first Explain in napari.
    if name in _LAZY:
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _classes() -> dict[str, type]:
    if not _CLASSES:
        for name, cls in _make_classes().items():
            cls.__module__ = __name__
            cls.__qualname__ = name
            _CLASSES[name] = cls
            globals()[name] = cls  # later lookups (and pickling by name) find it directly
    return _CLASSES
