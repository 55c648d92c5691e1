"""Synthetic data sets generated once into a data root, and generated again when their settings
change: the root records how its set was made."""

from __future__ import annotations

import json
import os
import sys
from typing import Callable, Optional

__all__ = ["generate_unless_current", "SYNTHETIC_RECORD"]

#: The file in data.root that records how the synthetic set there was generated.
SYNTHETIC_RECORD = "synthetic_settings.json"
def generate_unless_current(data: dict, marker: str, generate: Callable) -> None:
    """Writes the configured synthetic set into data.root unless it is there already, made with
    the same settings.

    ``marker`` is a file the generator writes last. The settings (every data.synthetic key, the
    generator's keyword arguments, and the marker, which tells the kinds of set apart) and the files
    written are recorded in data.root/synthetic_settings.json. When the configured settings
    differ from the recorded ones, the recorded files are removed and the set is generated again
    (said on stderr). A root with the marker but no record (made by calling the generator
    directly, or by an earlier version) is used as it is, with a note on stderr. In a distributed
    run only the main process calls this, while the others wait."""
    root = data["root"]
    kwargs = dict(data["synthetic"])
    settings = json.loads(json.dumps({**kwargs, "marker": marker}))  # tuples as lists, as read back
    record = _read_record(root)
    if os.path.exists(os.path.join(root, marker)):
        if record is None:
            print(f"deformdetr: using the synthetic data in {root} as it is (no record of its settings; "
                  f"delete it to generate the configured set)", file=sys.stderr)
            return
        if record["settings"] == settings:
            return
    if record is not None:
        print(f"deformdetr: the synthetic data in {root} does not match data.synthetic "
              f"({_differences(record['settings'], settings)}): generating it again", file=sys.stderr)
        _remove_files(root, record["files"])
    before = _files_under(root)
    generate(root, **kwargs)
    written = sorted(_files_under(root) - before)
    with open(os.path.join(root, SYNTHETIC_RECORD), "w") as handle:
        json.dump({"settings": settings, "files": written}, handle, indent=1)


def _read_record(root: str) -> Optional[dict]:
    """The record of an earlier generation, or None (none, or not readable as one)."""
    try:
        with open(os.path.join(root, SYNTHETIC_RECORD)) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("files"), list):
        return None
    return record


def _differences(old: dict, new: dict) -> str:
    keys = [k for k in new if old.get(k) != new[k]]
    return ", ".join(f"{k} {old.get(k)!r} -> {new[k]!r}" for k in keys)


def _files_under(root: str) -> set[str]:
    """Paths (relative to ``root``) of the files under it."""
    return {os.path.relpath(os.path.join(folder, name), root)
            for folder, _, names in os.walk(root) for name in names}


def _remove_files(root: str, files: list) -> None:
    """Removes the recorded files, then the folders they leave empty; only inside ``root``, so a
    damaged record cannot delete anything else."""
    real_root = os.path.realpath(root)
    folders = set()
    for relative in files:
        path = os.path.realpath(os.path.join(root, str(relative)))
        if os.path.commonpath([real_root, path]) != real_root or path == real_root:
            continue
        if os.path.isfile(path):
            os.remove(path)
        folders.add(os.path.dirname(path))
    for folder in sorted(folders, key=len, reverse=True):  # deepest first
        while folder != real_root and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
            folder = os.path.dirname(folder)
