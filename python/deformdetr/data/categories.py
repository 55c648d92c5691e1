"""The classes a detector predicts: each class index the model outputs (its *label*) with the data
set's own category id and name, so that predictions, result files, drawings and evaluation tables
speak the data set's language while the model works with indices.

Two ways to number them:
- contiguous (``model.num_classes: auto``): the data set's category ids, sorted, get labels
  0..K-1 and the model has K classes. For one's own data (ids such as 3, 17, 40).
- as the ids (``model.num_classes: N``): label = category id, which must be below N. This is the
  official COCO recipe (91 classes for ids 1..90 with gaps), kept so that official checkpoints
  and results are reproduced exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence, Union

__all__ = ["Category", "Categories", "COCO_CATEGORY_NAMES", "coco_categories"]


@dataclass(frozen=True)
class Category:
    label: int  # the model's class index
    id: int  # the data set's category id
    name: str


class Categories:
    """A table of :class:`Category`; ``num_classes`` is the model's number of classes (at least
    one more than the highest label). Labels without a category (the gaps of COCO's ids) are
    named by their number."""

    def __init__(self, categories: Iterable[Category], num_classes: Optional[int] = None):
        self.categories = tuple(sorted(categories, key=lambda c: c.label))
        self._by_label = {c.label: c for c in self.categories}
        self._by_id = {c.id: c for c in self.categories}
        highest = max(self._by_label, default=-1)
        self.num_classes = highest + 1 if num_classes is None else int(num_classes)
        if self.num_classes <= highest:
            raise ValueError(f"{self.num_classes} classes cannot hold label {highest}")

    # ---- building ---------------------------------------------------------------------------

    @classmethod
    def from_names(cls, names: Mapping[int, str], contiguous: bool, num_classes: Optional[int] = None,
                   source: str = "the data set") -> "Categories":
        """From {category id: name}: contiguous labels (0..K-1 in id order), or labels equal to
        the ids, below ``num_classes`` (an error naming ``source`` otherwise)."""
        if not names:
            raise ValueError(f"{source} lists no categories")
        ids = sorted(int(i) for i in names)
        if contiguous:
            return cls((Category(label, i, str(names[i])) for label, i in enumerate(ids)), num_classes)
        if num_classes is not None and (ids[-1] >= num_classes or ids[0] < 0):
            bad = ids[-1] if ids[-1] >= num_classes else ids[0]
            raise ValueError(f"{source}: category id {bad} does not fit model.num_classes={num_classes} (with "
                             f"a number, labels are the category ids, 0..num_classes-1, as in the official "
                             f"COCO setting of 91 for ids up to 90); set model.num_classes=auto to number the "
                             f"{len(ids)} categories 0..{len(ids) - 1}")
        return cls((Category(i, i, str(names[i])) for i in ids), num_classes)

    @classmethod
    def from_coco(cls, coco, num_classes: Union[int, str, None], source: str) -> "Categories":
        """The categories of a pycocotools COCO index; ``num_classes`` "auto" numbers them
        contiguously, a number keeps the ids as labels (None: as the ids, as many as needed)."""
        names = {int(c["id"]): str(c.get("name", c["id"])) for c in coco.dataset.get("categories", [])}
        contiguous = num_classes == "auto"
        return cls.from_names(names, contiguous, None if contiguous else num_classes, source)

    # ---- reading ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.categories)

    def __iter__(self):
        return iter(self.categories)

    def __eq__(self, other) -> bool:
        return isinstance(other, Categories) and (self.categories, self.num_classes) == (
            other.categories, other.num_classes)

    def __repr__(self) -> str:
        return f"Categories({len(self)} categories, num_classes={self.num_classes})"

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.categories]

    def has_id(self, category_id: int) -> bool:
        return int(category_id) in self._by_id

    def label_of(self, category_id: int) -> int:
        return self._by_id[int(category_id)].label

    def id_of(self, label: int) -> Optional[int]:
        """The category id of a label; None for a label without a category."""
        category = self._by_label.get(int(label))
        return None if category is None else category.id

    def name_of(self, label: int) -> str:
        category = self._by_label.get(int(label))
        return str(int(label)) if category is None else category.name

    def names(self) -> dict[int, str]:
        """{label: name}."""
        return {c.label: c.name for c in self.categories}

    # ---- saving -----------------------------------------------------------------------------

    def to_list(self) -> list[dict]:
        """Plain values (for checkpoints and JSON): [{"label", "id", "name"}, ...]."""
        return [{"label": c.label, "id": c.id, "name": c.name} for c in self.categories]

    @classmethod
    def from_list(cls, entries: Sequence[Mapping], num_classes: Optional[int] = None) -> "Categories":
        return cls((Category(int(e["label"]), int(e["id"]), str(e["name"])) for e in entries), num_classes)

    @classmethod
    def from_label_names(cls, names: Mapping[int, str], num_classes: Optional[int] = None) -> "Categories":
        """From {label: name} (what checkpoints of earlier versions record): ids equal labels."""
        return cls((Category(int(k), int(k), str(v)) for k, v in names.items()), num_classes)


#: The official COCO 2017 detection categories by id (1..90, 80 of them: the gaps are ids that
#: the data set does not use). Official Deformable DETR checkpoints predict 91 classes indexed so.
COCO_CATEGORY_NAMES = {
    1: "person", 2: "bicycle", 3: "car", 4: "motorcycle", 5: "airplane", 6: "bus", 7: "train", 8: "truck",
    9: "boat", 10: "traffic light", 11: "fire hydrant", 13: "stop sign", 14: "parking meter", 15: "bench",
    16: "bird", 17: "cat", 18: "dog", 19: "horse", 20: "sheep", 21: "cow", 22: "elephant", 23: "bear",
    24: "zebra", 25: "giraffe", 27: "backpack", 28: "umbrella", 31: "handbag", 32: "tie", 33: "suitcase",
    34: "frisbee", 35: "skis", 36: "snowboard", 37: "sports ball", 38: "kite", 39: "baseball bat",
    40: "baseball glove", 41: "skateboard", 42: "surfboard", 43: "tennis racket", 44: "bottle",
    46: "wine glass", 47: "cup", 48: "fork", 49: "knife", 50: "spoon", 51: "bowl", 52: "banana", 53: "apple",
    54: "sandwich", 55: "orange", 56: "broccoli", 57: "carrot", 58: "hot dog", 59: "pizza", 60: "donut",
    61: "cake", 62: "chair", 63: "couch", 64: "potted plant", 65: "bed", 67: "dining table", 70: "toilet",
    72: "tv", 73: "laptop", 74: "mouse", 75: "remote", 76: "keyboard", 77: "cell phone", 78: "microwave",
    79: "oven", 80: "toaster", 81: "sink", 82: "refrigerator", 84: "book", 85: "clock", 86: "vase",
    87: "scissors", 88: "teddy bear", 89: "hair drier", 90: "toothbrush",
}


def coco_categories(num_classes: int = 91) -> Categories:
    """The official COCO table, labels equal to the ids (the official checkpoints' numbering)."""
    return Categories.from_names(COCO_CATEGORY_NAMES, contiguous=False, num_classes=num_classes,
                                 source="the COCO categories")
