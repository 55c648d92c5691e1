"""Categories: labels the model predicts against the data set's own ids and names."""

import pytest

from deformdetr.data.categories import COCO_CATEGORY_NAMES, Categories, coco_categories


def test_auto_numbers_the_ids_contiguously():
    categories = Categories.from_names({40: "kiwi", 3: "apple", 17: "pear"}, contiguous=True)
    assert categories.num_classes == 3
    assert [(c.label, c.id, c.name) for c in categories] == [(0, 3, "apple"), (1, 17, "pear"), (2, 40, "kiwi")]
    assert categories.label_of(17) == 1 and categories.id_of(2) == 40 and categories.name_of(0) == "apple"


def test_a_number_of_classes_keeps_the_ids_as_labels():
    categories = Categories.from_names({3: "apple", 17: "pear"}, contiguous=False, num_classes=20)
    assert categories.num_classes == 20 and categories.label_of(17) == 17
    assert categories.id_of(5) is None and categories.name_of(5) == "5"  # a gap: no category
    with pytest.raises(ValueError, match=r"category id 17 does not fit model.num_classes=10.*num_classes=auto"):
        Categories.from_names({3: "apple", 17: "pear"}, contiguous=False, num_classes=10)


def test_no_categories_is_an_error():
    with pytest.raises(ValueError, match="lists no categories"):
        Categories.from_names({}, contiguous=True, source="train.json")


def test_the_table_round_trips_through_plain_values():
    categories = Categories.from_names({3: "apple", 17: "pear"}, contiguous=True)
    assert Categories.from_list(categories.to_list(), categories.num_classes) == categories


def test_official_coco_numbering():
    coco = coco_categories()
    assert coco.num_classes == 91 and len(coco) == 80 == len(COCO_CATEGORY_NAMES)
    assert coco.name_of(1) == "person" and coco.name_of(90) == "toothbrush" and coco.id_of(12) is None
