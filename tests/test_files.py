"""deformdetr._files.write_atomic: the old file or the new one, never half of one, no leftovers."""

import os
import stat

import pytest

from deformdetr._files import write_atomic


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "labels.txt"
    write_atomic(path, lambda handle: handle.write("old\n"), text=True)

    def half_then_fail(handle):
        handle.write("ne")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(path, half_then_fail, text=True)
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["labels.txt"]


@pytest.mark.parametrize("durable", [False, True])
def test_the_new_file_replaces_the_old_with_the_usual_permissions(tmp_path, durable):
    path = tmp_path / "sub" / "result.bin"  # the folder is created
    write_atomic(path, lambda handle: handle.write(b"first"), durable=durable)
    write_atomic(path, lambda handle: handle.write(b"second"), durable=durable)
    assert path.read_bytes() == b"second" and os.listdir(path.parent) == ["result.bin"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask  # not mkstemp's private 0600
