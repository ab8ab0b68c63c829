"""Save and load models as MONAI bundles, safely.

A bundle is a folder::

    configs/metadata.json    MONAI metadata + an "icnn" section: network, preprocessing, class names,
                             each filter's category, matched part, clinician's name, model checksum
    configs/inference.json   a MONAI bundle config (``python -m monai.bundle run``) that explains an image
    configs/train.json       the resolved training configuration of the run that made it
    models/model.pt          the network's state_dict (loaded with ``weights_only=True``)
    docs/README.md

Weights are only ever loaded with ``torch.load(..., weights_only=True)`` and after their SHA-256
matches the one recorded in the metadata, so a replaced or pickle-bearing file is refused.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_icnn import __version__
from napari_icnn.errors import BundleError
from napari_icnn.parts import filter_display_name

__all__ = [
    "FilterInfo",
    "LoadedModel",
    "load_bundle",
    "save_bundle",
    "read_metadata",
    "lesion_types_size",
    "rename_filters",
    "shipped_bundle_path",
    "default_bundle_path",
    "editable_bundle",
    "user_bundle_dir",
    "sha256_file",
    "set_experience",
    "check_model",
    "require_model",
    "same_bundle",
    "ModelCache",
]

METADATA = Path("configs") / "metadata.json"
WEIGHTS = Path("models") / "model.pt"


@dataclass(frozen=True)
class FilterInfo:
    """What the bundle knows about one interpretable filter."""

    id: int
    category: str | None = None
    """Category the filter was assigned to in training ("free" for label-free anatomy filters)."""
    part: str | None = None
    """Part key it was matched to on annotated validation images (best per-image IoU), if any."""
    part_score: float | None = None
    """The matching score (mean per-image IoU with that part)."""
    part_hit_rate: float | None = None
    """How often the filter's peak lay inside that part on the validation images that have it."""
    name: str | None = None
    """A clinician's name for the filter; overrides the part name when set."""
    act_scale: float = 1.0
    """Typical strong activation (99th percentile of per-image maxima on validation images): maps are divided
    by it for display, so a weak response looks weak."""
    fire_threshold: float | None = None
    """For a lesion-type filter: the peak activation at and above which it says "my lesion type is here", fixed on
    the validation images (the one that best separates those with its type from those without); ``None`` for
    other filters and older bundles."""

    @property
    def display_name(self) -> str:
        return filter_display_name(self.id, self.name, self.part, self.category)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FilterInfo:
        return cls(
            id=int(d["id"]),
            category=d.get("category"),
            part=d.get("part"),
            part_score=None if d.get("part_score") is None else float(d["part_score"]),
            part_hit_rate=None if d.get("part_hit_rate") is None else float(d["part_hit_rate"]),
            name=d.get("name"),
            act_scale=float(d.get("act_scale", 1.0) or 1.0),
            fire_threshold=None if d.get("fire_threshold") is None else float(d["fire_threshold"]),
        )


@dataclass
class LoadedModel:
    """A bundle loaded for inference: the network in eval mode plus what is needed to explain with it."""

    path: Path
    net: Any
    device: Any
    metadata: dict[str, Any]
    filters: list[FilterInfo]
    class_names: list[str]
    task: str
    size: int
    threshold: float
    sha256: str
    reference: Any = None
    """``(2C,)`` float32 pooled features of the reference eye (a tensor on ``device``), or ``None``:
    contributions are then zero-ablation."""
    reference_cohort: str = ""
    """What the reference eye is the mean of, e.g. "120 healthy (ICDR grade 0) validation eyes"."""
    temperature: float = 1.0
    """Probabilities are ``sigmoid(logit / temperature)``, fitted on the validation cohort (1: uncalibrated)."""
    experience: Any = None
    """The model's experience (:class:`napari_icnn.experience.Experience`): statistics of its training
    photographs that say how unlike them a scan is; ``None`` for a bundle that stores none (``icnn calibrate
    --train`` adds them)."""
    targets: str = ""
    """The labels the outputs predict, a :data:`napari_icnn.config.TARGET_SETS` key (``referable``,
    ``referable+lesion-types``, ``lesions``); empty means the task's own."""

    def __post_init__(self) -> None:
        if not self.targets:
            self.targets = self.task

    @property
    def decision_index(self) -> int | None:
        """The output that is the product's yes/no decision (referable DR), or ``None`` for a multi-label model
        without one."""
        return 0 if self.targets in ("referable", "referable+lesion-types") else None

    @property
    def has_lesion_types(self) -> bool:
        """Whether the filters were trained for lesion types (so their evidence is lesion-type evidence)."""
        return self.targets in ("lesions", "referable+lesion-types")

    @property
    def contribution_basis(self) -> str:
        """How this model's contributions are measured, in words for outputs."""
        if self.reference is None:
            return ("zero-ablation: logit drop when the filter's map is zeroed (this model stores no reference eye; "
                    "icnn calibrate adds one)")
        return f"against a reference eye: the mean of {self.reference_cohort}"

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", self.path.name))

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "0.0.0"))

    def filter(self, fid: int) -> FilterInfo:
        return self.filters[fid]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's contents, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_metadata(bundle: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``configs/metadata.json`` of a bundle folder."""
    root = Path(bundle)
    if not root.exists():
        raise BundleError(f"{root}: no such model bundle")
    if not root.is_dir():
        raise BundleError(f"{root}: a model bundle is a folder (with configs/metadata.json and models/model.pt)")
    meta_path = root / METADATA
    if not meta_path.is_file():
        raise BundleError(f"{root}: not a model bundle (configs/metadata.json is missing)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{meta_path}: unreadable metadata ({err})") from None
    icnn = meta.get("icnn") if isinstance(meta, dict) else None
    if not isinstance(icnn, dict) or "network" not in icnn or "filters" not in icnn:
        raise BundleError(f"{meta_path}: not a napari-icnn bundle (no 'icnn' section with network and filters)")
    return meta


def lesion_types_size(bundle: str | os.PathLike[str]) -> int | None:
    """The input size of a bundle that has lesion-type filters (retraining it keeps that size), else None."""
    from napari_icnn.parts import MASK_LESION_KEYS

    icnn = read_metadata(bundle)["icnn"]
    if not any(isinstance(f, dict) and f.get("category") in MASK_LESION_KEYS for f in icnn["filters"]):
        return None
    size = icnn["network"].get("image_size")  # the network's own record, as load_bundle reads it
    return int(size) if isinstance(size, int | float) else None


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` through :func:`~napari_icnn.atomic.atomic_write`: a crash never leaves half a checkpoint."""
    import torch

    from napari_icnn.atomic import atomic_write

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def check_model(text: str | os.PathLike[str]) -> str | None:
    """Why ``text`` does not name a usable bundle folder (``None`` when it does).

    The check every form and ``icnn explain`` make before loading, so that both refuse a bundle in the
    same words. It reads the metadata but not the weights (hashing them on every keystroke would be
    slow): a tampered weights file is refused by :func:`load_bundle`.
    """
    text = os.fspath(text).strip()
    if not text:
        return "Choose a model bundle folder."
    path = Path(text).expanduser()
    try:
        read_metadata(path)
    except BundleError as err:
        return str(err)
    if not (path / WEIGHTS).is_file():
        return f"{path}: models/model.pt is missing"
    return None


def require_model(text: str | os.PathLike[str]) -> Path:
    """The bundle folder ``text`` names, after :func:`check_model`.

    Raises
    ------
    BundleError
        With :func:`check_model`'s words.
    """
    problem = check_model(text)
    if problem is not None:
        raise BundleError(problem)
    return Path(os.fspath(text).strip()).expanduser()


def same_bundle(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same folder (``~`` and links resolved; unresolvable paths differ)."""
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


class ModelCache:
    """The last loaded model, reused while its bundle's metadata and weights are unchanged.

    Loading (hashing and unpickling the weights, building the network) takes most of a second, so an
    interactive caller keeps one cache; a renamed filter or retrained model changes the files and so
    the key, and the next :meth:`get` loads them again.
    """

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self._key: tuple[Any, ...] | None = None
        self._model: LoadedModel | None = None

    @staticmethod
    def key(path: str | os.PathLike[str]) -> tuple[Any, ...]:
        """What identifies the bundle's state: its resolved path and its metadata's and weights' stamps."""
        root = Path(path)
        stamps: list[tuple[int, int] | None] = []
        for part in (METADATA, WEIGHTS):
            try:
                st = (root / part).stat()
                stamps.append((st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(None)
        return (str(root.resolve()), *stamps)

    def get(self, path: str | os.PathLike[str]) -> tuple[LoadedModel, bool]:
        """The model of ``path`` and whether it was (re)loaded now (:func:`load_bundle`'s errors pass)."""
        key = self.key(path)
        if self._model is not None and key == self._key:
            return self._model, False
        model = load_bundle(path, device=self.device)
        self._key, self._model = key, model
        return model, True


def load_bundle(bundle: str | os.PathLike[str], device: str = "auto") -> LoadedModel:
    """Load a bundle for inference.

    Raises
    ------
    BundleError
        The folder is not a bundle, the weights do not match the recorded checksum, the weights file
        holds anything but tensors, or the weights do not fit the recorded network.
    """
    import torch

    from napari_icnn.devices import resolve_device
    from napari_icnn.icnn.networks import ICNN

    root = Path(bundle)
    meta = read_metadata(root)
    icnn = meta["icnn"]
    weights = root / WEIGHTS
    if not weights.is_file():
        raise BundleError(f"{root}: models/model.pt is missing")
    digest = sha256_file(weights)
    recorded = icnn.get("model_sha256")
    if recorded and recorded != digest:
        raise BundleError(
            f"{weights}: refused — its SHA-256 does not match the one recorded in configs/metadata.json "
            "(the weights were modified or replaced)"
        )
    dev = resolve_device(device)
    try:
        state = torch.load(weights, map_location=dev, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means: refuse the file
        raise BundleError(
            f"{weights}: refused — not a plain tensor state_dict ({type(err).__name__}: {str(err)[:200]})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(f"{weights}: refused — expected a state_dict of tensors")
    try:
        net = ICNN(**icnn["network"])
        net.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError, ValueError) as err:
        raise BundleError(f"{weights}: does not fit the network recorded in metadata.json ({str(err)[:300]})") from None
    net.to(dev).eval()
    filters = [FilterInfo.from_dict(f) for f in icnn["filters"]]
    reference, cohort = _reference(icnn.get("reference"), net.n_filters, root)
    return LoadedModel(
        path=root,
        net=net,
        device=dev,
        metadata=meta,
        filters=filters,
        class_names=list(icnn.get("class_names", ["positive"])),
        task=str(icnn.get("task", "referable")),
        size=int(icnn["network"].get("image_size", 256)),
        threshold=float(icnn.get("threshold", 0.5)),
        sha256=digest,
        reference=None if reference is None else torch.as_tensor(reference, dtype=torch.float32, device=dev),
        reference_cohort=cohort,
        temperature=_temperature(icnn.get("calibration"), root),
        experience=_experience(icnn.get("experience"), net.summary_width, root),
        targets=_targets(icnn, root),
    )


def _targets(icnn: Mapping[str, Any], root: Path) -> str:
    """The recorded target set, checked against the outputs (older bundles record only the task)."""
    from napari_icnn.config import TARGET_SETS

    if not icnn.get("targets"):
        return str(icnn.get("task", "referable"))
    targets = str(icnn["targets"])
    if targets not in TARGET_SETS:
        raise BundleError(f"{root / METADATA}: unknown target set {targets!r}; known: {', '.join(TARGET_SETS)}")
    n_out = int(icnn["network"].get("n_outputs", 1))
    if len(TARGET_SETS[targets]) != n_out:
        raise BundleError(f"{root / METADATA}: target set {targets!r} has {len(TARGET_SETS[targets])} outputs; the "
                          f"network has {n_out}")
    return targets


def _temperature(entry: Any, root: Path) -> float:
    """The temperature recorded in a bundle (1 when it records none), checked."""
    if entry is None:
        return 1.0
    try:
        t = float(entry["temperature"])
    except (TypeError, KeyError, ValueError):
        raise BundleError(f"{root / METADATA}: unreadable calibration (icnn.calibration.temperature)") from None
    if not (np.isfinite(t) and t > 0):
        raise BundleError(f"{root / METADATA}: the calibration temperature must be a positive number; got {t}")
    return t


def _experience(entry: Any, width: int, root: Path) -> Any:
    """The model's experience recorded in a bundle, checked; ``None`` when there is none."""
    from napari_icnn.experience import Experience

    if entry is None:
        return None
    try:
        exp = Experience.from_entry(entry)
    except (TypeError, KeyError, ValueError, AttributeError):
        raise BundleError(f"{root / METADATA}: unreadable experience statistics (icnn.experience)") from None
    if exp.dims != width:
        raise BundleError(f"{root / METADATA}: the experience statistics hold {exp.dims} features; this network's "
                          f"summary has {width}")
    return exp


def set_experience(bundle: str | os.PathLike[str], entry: Mapping[str, Any]) -> Path:
    """Store the model's experience (:meth:`napari_icnn.experience.Experience.to_entry`) in a bundle's metadata,
    keeping a timestamped backup; the weights are untouched."""
    root = Path(bundle)
    meta = read_metadata(root)
    from napari_icnn.icnn.networks import ICNN

    _experience(entry, ICNN(**meta["icnn"]["network"]).summary_width, root)
    meta["icnn"]["experience"] = dict(entry)
    _write_metadata(root, meta)
    return root


def set_calibration(bundle: str | os.PathLike[str], entry: Mapping[str, Any]) -> Path:
    """Store a fitted temperature (:func:`napari_icnn.engine.calibration.temperature_entry`) in a bundle's
    metadata, keeping a timestamped backup; the weights are untouched."""
    root = Path(bundle)
    meta = read_metadata(root)
    _temperature(entry, root)
    meta["icnn"]["calibration"] = dict(entry)
    _write_metadata(root, meta)
    return root


def _reference(entry: Any, n_filters: int, root: Path) -> tuple[np.ndarray | None, str]:
    """The reference eye recorded in a bundle, checked; ``(None, "")`` when there is none."""
    if entry is None:
        return None, ""
    try:
        pooled = np.asarray(entry["pooled"], dtype=np.float64)
        cohort = str(entry.get("cohort") or f"{int(entry.get('n_images', 0))} validation eyes")
    except (TypeError, KeyError, ValueError, AttributeError):
        raise BundleError(f"{root / METADATA}: unreadable reference eye (icnn.reference)") from None
    if pooled.shape != (2 * n_filters,) or not np.isfinite(pooled).all():
        raise BundleError(
            f"{root / METADATA}: the reference eye holds {pooled.size} values; this network needs {2 * n_filters}"
        )
    return pooled, cohort


def set_reference(bundle: str | os.PathLike[str], entry: Mapping[str, Any]) -> Path:
    """Store a reference eye (:func:`napari_icnn.engine.reference.reference_entry`) in a bundle's
    metadata, keeping a timestamped backup; the weights are untouched."""
    root = Path(bundle)
    meta = read_metadata(root)
    n = len(meta["icnn"]["filters"])
    if len(entry.get("pooled", ())) != 2 * n:
        raise BundleError(f"{root}: a reference eye for {n} filters needs {2 * n} values")
    meta["icnn"]["reference"] = dict(entry)
    _write_metadata(root, meta)
    return root


def _write_metadata(root: Path, meta: dict[str, Any]) -> None:
    """Replace a bundle's metadata (and its README) atomically, after a timestamped backup."""
    from napari_icnn.atomic import atomic_write_text

    meta_path = root / METADATA
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    shutil.copy2(meta_path, meta_path.with_name(f"metadata.json.bak-{stamp}"))
    atomic_write_text(meta_path, json.dumps(meta, indent=2))
    readme = root / "docs" / "README.md"
    if readme.parent.exists():
        atomic_write_text(readme, _bundle_readme(meta))


def _monai_metadata(name: str, description: str, icnn: dict[str, Any], version: str) -> dict[str, Any]:
    import monai
    import numpy
    import torch

    size = icnn["network"]["image_size"]
    classes = icnn["class_names"]
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "name": name,
        "version": version,
        "changelog": {version: "trained with napari-icnn " + __version__},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
        "required_packages_version": {"napari-icnn": __version__},
        "task": f"Interpretable CNN for colour fundus photographs: {icnn['task']}",
        "description": description,
        "authors": "napari-icnn",
        "copyright": "napari-icnn developers",
        "intended_use": "Research only. Not for clinical use.",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "modality": "OP",
                    "num_channels": 3,
                    "spatial_shape": [size, size],
                    "dtype": "float32",
                    "value_range": [-10, 10],
                    "is_patch_data": False,
                    "channel_def": {"0": "red", "1": "green", "2": "blue"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": len(classes),
                    "spatial_shape": [len(classes)],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": False,
                    "channel_def": {str(i): c for i, c in enumerate(classes)},
                }
            },
        },
        "icnn": icnn,
    }


def _inference_config(icnn: dict[str, Any]) -> dict[str, Any]:
    return {
        "imports": ["$import torch", "$from napari_icnn.explain import explain_file"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "napari_icnn.icnn.networks.ICNN", **icnn["network"]},
        "network": "$@network_def.to(@device)",
        "image": "",
        "output_dir": "$@bundle_root + '/explanations'",
        "top_k": 8,
        "run": ["$explain_file(@image, @bundle_root, @output_dir, top_k=@top_k)"],
    }


def save_bundle(
    out: str | os.PathLike[str],
    state_dict: Mapping[str, Any],
    *,
    network: dict[str, Any],
    task: str,
    class_names: list[str],
    filters: list[FilterInfo],
    train_config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    name: str = "fundus_icnn",
    description: str = "Interpretable CNN trained with napari-icnn",
    version: str = "0.1.0",
    threshold: float = 0.5,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle folder (each file atomically). Existing weights/metadata in ``out`` are replaced."""
    import torch

    from napari_icnn.atomic import atomic_write_text

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    weights = root / WEIGHTS
    atomic_torch_save({k: v.detach().cpu() for k, v in state_dict.items() if isinstance(v, torch.Tensor)}, weights)
    icnn = {
        "task": task,
        "class_names": list(class_names),
        "threshold": threshold,
        "network": dict(network),
        "preprocessing": {
            "size": int(network["image_size"]),
            "crop": "square around the detected field of view",
            "normalise": "per image and channel inside the field of view (zero mean, unit std)",
        },
        "filters": [asdict(f) for f in filters],
        "model_sha256": sha256_file(weights),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "napari_icnn_version": __version__,
        **({"metrics": metrics} if metrics else {}),
        **(extra or {}),
    }
    meta = _monai_metadata(name, description, icnn, version)
    atomic_write_text(root / METADATA, json.dumps(meta, indent=2))
    atomic_write_text(root / "configs" / "inference.json", json.dumps(_inference_config(icnn), indent=2))
    if train_config is not None:
        atomic_write_text(root / "configs" / "train.json", json.dumps(train_config, indent=2, sort_keys=True))
    atomic_write_text(root / "docs" / "README.md", _bundle_readme(meta))
    license_path = root / "LICENSE"
    if not license_path.exists():
        atomic_write_text(license_path, "BSD-3-Clause. Research use only; not for clinical use.\n")
    return root


def _bundle_readme(meta: dict[str, Any]) -> str:
    icnn = meta["icnn"]
    lines = [
        f"# {meta['name']} {meta['version']}",
        "",
        meta["description"],
        "",
        "**Research use only. Not for clinical use.**",
        "",
        f"Task: {icnn['task']}; classes: {', '.join(icnn['class_names'])}; input {icnn['network']['image_size']} px; "
        f"backbone {icnn['network']['arch']}; {len(icnn['filters'])} interpretable filters.",
        "",
        "| filter | name | category | matched part | score |",
        "|---|---|---|---|---|",
    ]
    for f in icnn["filters"]:
        info = FilterInfo.from_dict(f)
        score = "" if info.part_score is None else f"{info.part_score:.3f}"
        lines.append(f"| {info.id} | {info.display_name} | {info.category or ''} | {info.part or ''} | {score} |")
    lines += ["", "Explain an image: `icnn explain IMAGE --model THIS_FOLDER --out DIR`, or",
              "`python -m monai.bundle run --config_file configs/inference.json --bundle_root . --image IMAGE`."]
    return "\n".join(lines) + "\n"


def rename_filters(bundle: str | os.PathLike[str], names: Mapping[int, str | None]) -> Path:
    """Set clinicians' names of filters in a bundle's metadata, keeping a timestamped backup.

    An empty name clears it (the part name shows again). The weights are untouched.
    """
    root = Path(bundle)
    meta = read_metadata(root)
    filters = meta["icnn"]["filters"]
    by_id = {int(f["id"]): f for f in filters}
    for fid, name in names.items():
        if int(fid) not in by_id:
            raise BundleError(f"{root}: has no filter {fid} (it has {len(filters)})")
        by_id[int(fid)]["name"] = (name or "").strip() or None
    _write_metadata(root, meta)
    return root


def shipped_bundle_path() -> Path:
    """The demo bundle shipped inside the package (never edited in place)."""
    return Path(__file__).parent / "models" / "demo"


def user_bundle_dir() -> Path:
    """Where user copies of bundles live (platformdirs' user data folder; ``NAPARI_ICNN_DATA_DIR`` overrides)."""
    override = os.environ.get("NAPARI_ICNN_DATA_DIR")
    if override:
        return Path(override) / "bundles"
    from platformdirs import user_data_dir

    return Path(user_data_dir("napari-icnn", appauthor=False)) / "bundles"


def default_bundle_path() -> Path:
    """The default ``--model``: the user's edited copy of the demo bundle if there is one, else the shipped one."""
    copy = user_bundle_dir() / "demo"
    if (copy / METADATA).is_file() and (copy / WEIGHTS).is_file():
        return copy
    return shipped_bundle_path()


def editable_bundle(bundle: str | os.PathLike[str]) -> Path:
    """A bundle path that may be edited: the shipped demo bundle is first copied to the user's data folder."""
    root = Path(bundle).resolve()
    shipped = shipped_bundle_path().resolve()
    if root != shipped:
        return root
    target = user_bundle_dir() / "demo"
    if not (target / METADATA).is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".demo-copy-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(shipped, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.bak-*"))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    return target


def with_names(filters: list[FilterInfo], names: Mapping[int, str | None]) -> list[FilterInfo]:
    return [replace(f, name=names.get(f.id, f.name)) for f in filters]
