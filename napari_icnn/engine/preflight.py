"""Everything that can be checked about a training run before it starts, in one pass.

``icnn train`` raises the first problem (:meth:`TrainCheck.raise_first`); the Train widget shows every
problem next to its field, and the values the "auto" settings will take as hints. Both call
:func:`check_training`, so they refuse the same inputs with the same words. What only the engine can find
out (unreadable pixels, a folder that fills up) is still reported by the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from napari_icnn.config import TrainConfig, flag_of
from napari_icnn.data.preflight import DataCheck, check_data
from napari_icnn.engine.run_folder import missing_output
from napari_icnn.errors import BundleError, ConfigError, IcnnError

if TYPE_CHECKING:
    from napari_icnn.devices import DeviceInfo

__all__ = ["TrainCheck", "check_training", "shown"]


@dataclass
class TrainCheck:
    """The result of :func:`check_training`."""

    errors: dict[str, IcnnError] = field(default_factory=dict)
    """Field -> the first problem found with it, in the order found (``""``: a problem of no one field)."""
    hints: dict[str, str] = field(default_factory=dict)
    """Field -> what the data reads as, or the value an "auto" setting takes and why."""
    config: TrainConfig | None = None
    """The configuration as given (``None`` when it is invalid)."""
    resolved: TrainConfig | None = None
    """:attr:`config` resolved for the data, where that could be done."""

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def problems(self) -> dict[str, str]:
        """Field -> the message of its first problem."""
        return {name: str(err) for name, err in self.errors.items()}

    def raise_first(self) -> TrainConfig:
        """Raise the first problem found; the configuration as given when there is none."""
        for err in self.errors.values():
            raise err
        assert self.config is not None
        return self.config

    def _add(self, err: IcnnError, name: str | None) -> None:
        self.errors.setdefault(name or "", err)


def shown(value: Any) -> str:
    """A setting's value as the messages write it (``0.2``, ``16``, ``lesion-types``)."""
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def check_training(
    values: Mapping[str, Any],
    *,
    device: DeviceInfo | None = None,
    data_check: Callable[[str, str, str | None], DataCheck] = check_data,
) -> TrainCheck:
    """Check a new run's settings (:class:`TrainConfig` field -> value), its data, the bundle it starts from and
    its device.

    ``device`` is what ``values["device"]`` resolves to (:func:`~napari_icnn.devices.describe_device`,
    asked when not given); ``data_check`` reads a data path (a caller may pass a cached
    :func:`~napari_icnn.data.preflight.check_data`). The output folder's contents are not looked at here: the
    engine refuses a used folder itself, and the widget offers to resume one.
    """
    check = TrainCheck()
    data, val, task = values.get("data") or "", values.get("val"), values.get("task", "referable")
    if not data.strip():
        check._add(ConfigError(f"{flag_of('data')}: give a training folder or CSV file", field="data"), "data")
    if not values.get("out"):
        check._add(missing_output(), "out")
    try:
        check.config = TrainConfig(**values)
    except ConfigError as err:
        check._add(err, err.field)
    if device is None:
        from napari_icnn.devices import describe_device

        device = describe_device(values.get("device", "auto"))
    if device.problem:
        check._add(ConfigError(device.problem, field="device"), "device")
    found = {}
    for name, path, fmt in (("data", data, values.get("format", "auto")), ("val", val, "auto")):
        if path and path.strip():
            found[name] = data_check(path, fmt, task)
            error = found[name].error
            if error is not None:
                check._add(error, name)
            else:
                check.hints[name] = found[name].summary
    retrained_size = None
    if values.get("init"):
        from napari_icnn.bundle import lesion_types_size, require_model  # the words the Explain form uses

        try:
            require_model(values["init"])
            retrained_size = lesion_types_size(values["init"]) if values.get("size") is None else None
        except BundleError as err:
            check._add(err, "init")
    if check.config is None:
        return check
    # The engine's own resolution on the counts it will see: "auto" settings get their values, and explicit
    # values that do not fit the data are refused now rather than after the data was loaded.
    usable = "data" in found and all(c.error is None for c in found.values())
    labelled = [c.lesion_labels for c in found.values()]
    try:
        check.resolved = check.config.resolved(
            found["data"].count if usable else None,
            found["val"].count if usable and "val" in found else None,
            device_type="cuda" if device.kind == "gpu" else "cpu",
            lesion_labels=all(labelled) if usable else None,
            lesion_masks=found["data"].lesion_masks if usable else None,
            init_size=retrained_size,
        )
    except ConfigError as err:
        check._add(err, err.field)
    else:
        for name, how in check.resolved.derived.items():
            check.hints[name] = f"auto: {shown(getattr(check.resolved, name))} ({how})"
    return check
