"""Layout checks shared by the dataset readers.

Users bring the data sets themselves, in the folder layouts the data sets are published in.
The commonest failure is a root that points one level too high or too low, so every error
here names the missing path and prints the tree the reader expected.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from dmdl_dist.errors import DmdlError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
_CAMERA = re.compile(r"^cam(\d+)$")
_SHOWN = 5  # how many offending paths an error message lists


class DatasetLayoutError(DmdlError, FileNotFoundError):
    """A data set root does not have the layout its reader expects (a missing or malformed file)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return str(self.args[0])


def missing(dataset: str, path: Path, layout: str, hint: str = "") -> DatasetLayoutError:
    """The error for one missing file or folder, with the expected tree."""
    message = f"{dataset}: {path} does not exist.\nExpected layout:\n{layout}"
    if hint:
        message += f"\n{hint}"
    return DatasetLayoutError(message, path)


def require(dataset: str, path: Path, layout: str, *, is_dir: bool) -> Path:
    """Returns path when it exists as a folder (is_dir) or a file, else raises DatasetLayoutError."""
    found = path.is_dir() if is_dir else path.is_file()
    if not found:
        raise missing(dataset, path, layout)
    return path


def read_id_list(path: Path) -> list[int]:
    """Ids from a SYSU-style list file: comma-separated ints, on one line or several."""
    text = path.read_text()
    try:
        return [int(token) for token in re.split(r"[,\s]+", text) if token]
    except ValueError as err:
        raise DatasetLayoutError(f"{path}: expected comma-separated integer ids ({err})", path) from None


def read_labelled_list(path: Path) -> list[tuple[str, int]]:
    """(relative path, label) pairs from lines "<relative path> <label>"; blank lines are skipped."""
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = line.rsplit(maxsplit=1)
        try:
            pairs.append((parts[0].replace("\\", "/"), int(parts[1])))
        except (IndexError, ValueError):
            raise DatasetLayoutError(f"{path}, line {number}: expected '<relative path> <label>', got {line!r}",
                                     path) from None
    return pairs


def check_listed_files(dataset: str, root: Path, listed: Iterable[str], source: str) -> None:
    """Raises DatasetLayoutError when files named in an index file are not on disk."""
    absent = [rel for rel in listed if not (root / rel).is_file()]
    if absent:
        shown = "\n".join(f"  {rel}" for rel in absent[:_SHOWN])
        more = f"\n  ... and {len(absent) - _SHOWN} more" if len(absent) > _SHOWN else ""
        raise DatasetLayoutError(
            f"{dataset}: {len(absent)} file(s) listed in {source} do not exist under {root}:\n{shown}{more}\n"
            "Is the root the folder the index paths are relative to, and is the copy complete?",
            root / absent[0],
        )


def camera_number(name: str) -> int | None:
    """The N of a folder named camN, else None."""
    match = _CAMERA.match(name)
    return int(match.group(1)) if match else None


def camera_from_path(rel: str) -> int | None:
    """The camera number from the first camN component of a relative path, else None."""
    for part in rel.split("/"):
        number = camera_number(part)
        if number is not None:
            return number
    return None


def subfolders(folder: Path) -> Iterator[os.DirEntry]:
    """Non-hidden subfolders of folder, in name order."""
    with os.scandir(folder) as entries:
        found = [entry for entry in entries if entry.is_dir() and not entry.name.startswith(".")]
    yield from sorted(found, key=lambda entry: entry.name)


def image_names(folder: str | os.PathLike) -> list[str]:
    """Names of the image files in one folder, sorted; other files are ignored."""
    with os.scandir(folder) as entries:
        return sorted(
            entry.name
            for entry in entries
            if entry.is_file() and not entry.name.startswith(".") and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES
        )


def id_folders(cam_dir: Path, wanted: set[int]) -> Iterator[tuple[int, os.DirEntry]]:
    """(pid, folder) for identity folders whose name is an integer in wanted ("0007" and "7" both match 7)."""
    for entry in subfolders(cam_dir):
        if entry.name.isdigit() and int(entry.name) in wanted:
            yield int(entry.name), entry
