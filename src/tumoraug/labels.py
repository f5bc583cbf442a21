"""The one mapping between tumor grades and integer class labels: ``"LGG" -> 0``, ``"HGG" -> 1``.

Every user-facing API accepts either form and converts here, so that the mapping lives in one
place only.
"""

from __future__ import annotations

from collections.abc import Iterable

from tumoraug.errors import LabelError

GRADES: tuple[str, ...] = ("LGG", "HGG")
"""Grade names, indexed by their integer label."""

NUM_CLASSES: int = len(GRADES)

LabelLike = str | int


def to_label(value: LabelLike) -> int:
    """Return the integer label of ``value`` (``"LGG"``/``"HGG"`` in any case, or 0/1)."""
    if isinstance(value, str):
        key = value.strip().upper()
        if key in GRADES:
            return GRADES.index(key)
        if key.isdigit():
            return to_label(int(key))
        raise LabelError(f"unknown tumor grade {value!r}: expected one of {', '.join(GRADES)}")
    if hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int):
        raise LabelError(f"class label must be a grade string or an int, got {value!r}")
    if not 0 <= value < NUM_CLASSES:
        raise LabelError(
            f"class label {value} out of range: expected 0..{NUM_CLASSES - 1} ({', '.join(GRADES)})"
        )
    return value


def to_grade(value: LabelLike) -> str:
    """Return the grade string (``"LGG"`` or ``"HGG"``) of a label or grade."""
    return GRADES[to_label(value)]


def to_labels(values: LabelLike | Iterable[LabelLike], n: int | None = None) -> list[int]:
    """Normalise one label or a sequence of labels to a list of ints.

    A single label with ``n`` gives ``n`` copies; a sequence with ``n`` must have length ``n``.
    """
    if isinstance(values, str | int) or getattr(values, "ndim", None) == 0:
        labels = [to_label(values)] * (1 if n is None else n)
    else:
        labels = [to_label(v) for v in values]
        if n is not None and len(labels) != n:
            raise LabelError(f"got {len(labels)} labels but n={n}")
    if n is not None and n < 0:
        raise LabelError(f"n must be >= 0, got {n}")
    return labels
