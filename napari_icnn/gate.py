"""The gate in front of every verdict: can the photograph be graded, and is it like what the model learned from?

:class:`Gate` joins the image quality (:mod:`napari_icnn.quality`) and the model's experience
(:mod:`napari_icnn.experience`) into one outcome that the Explain widget, ``icnn explain``, ``icnn infer`` and
the structured report all show alike:

* ``gradable`` — the verdict stands;
* ``unfamiliar`` — gradable, but outside the model's experience: the probability is given with that warning,
  or withheld when the caller asks for it (``decline_unfamiliar``);
* ``ungradeable`` — no probability; the reason in words ("ungradeable: out of focus").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from napari_icnn.quality import Quality

__all__ = ["Gate", "GATE_STATUSES"]

GATE_STATUSES = ("gradable", "unfamiliar", "ungradeable")


@dataclass(frozen=True)
class Gate:
    """Quality and familiarity of one scan, and what follows for its verdict."""

    quality: Quality
    experience: float | None = None
    """The scan's distance from the training photographs over the model's limit (above 1: outside its
    experience); ``None`` when the model stores no statistics of its training photographs."""
    decline_unfamiliar: bool = False
    """Withhold the verdict of an unfamiliar scan too (not only of an ungradeable one)."""

    @property
    def familiar(self) -> bool | None:
        return None if self.experience is None else self.experience <= 1.0

    @property
    def status(self) -> str:
        """One of :data:`GATE_STATUSES`."""
        if not self.quality.gradable:
            return "ungradeable"
        return "unfamiliar" if self.familiar is False else "gradable"

    @property
    def declined(self) -> bool:
        """Whether the verdict is withheld."""
        return self.status == "ungradeable" or (self.status == "unfamiliar" and self.decline_unfamiliar)

    def withheld(self, keep_ungradeable: bool = False) -> bool:
        """Whether the verdict is withheld, given whether the caller keeps verdicts on ungradeable photographs
        (``--keep-ungradeable``); an unfamiliar scan declined on request stays withheld."""
        return self.declined and not (keep_ungradeable and self.status == "ungradeable")

    @property
    def message(self) -> str:
        """The outcome in one line, e.g. ``"ungradeable: out of focus (sharpness 0.21, gradable from 0.35)"``."""
        if self.status == "ungradeable":
            return self.quality.verdict
        familiarity = ("the model stores no statistics of its training photographs" if self.experience is None
                       else f"experience score {self.experience:.2f} (limit 1.00)")
        if self.status == "unfamiliar":
            caveat = "" if self.declined else "; its probability may not hold"
            return f"outside the model's experience: {familiarity}{caveat}"
        return f"gradable · {familiarity}"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "declined": self.declined, "message": self.message,
                "experience_score": None if self.experience is None else round(self.experience, 4),
                "quality": self.quality.to_json()}
