"""Names that moved keep working from their old module, with a DeprecationWarning naming the new
home, and are the very objects of the new one."""

import importlib

import pytest

MOVED = [
    ("deformdetr.models.deformable_detr", "load_checkpoint", "deformdetr.models.checkpoint", "load_checkpoint"),
    ("deformdetr.models.deformable_detr", "state_dict_mismatches", "deformdetr.models.checkpoint",
     "state_dict_mismatches"),
    ("deformdetr.engine.checkpoint", "load_training_checkpoint", "deformdetr.models.checkpoint", "read_checkpoint"),
    ("deformdetr.eval", "read_kitti_label_dir", "deformdetr.eval.kitti", "read_kitti_label_dir"),
    ("deformdetr.eval", "write_kitti_result_file", "deformdetr.eval.kitti", "write_kitti_result_file"),
]


@pytest.mark.parametrize("old_module, old_name, new_module, new_name", MOVED)
def test_a_moved_name_warns_and_is_the_new_object(old_module, old_name, new_module, new_name):
    with pytest.warns(DeprecationWarning, match=f"{old_module}.{old_name} has moved to {new_module}.{new_name}"):
        found = getattr(importlib.import_module(old_module), old_name)
    assert found is getattr(importlib.import_module(new_module), new_name)


def test_an_unknown_name_is_still_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'no_such_thing'"):
        importlib.import_module("deformdetr.eval").no_such_thing
