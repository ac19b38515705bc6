"""Reading `.npz` data files (demonstrations, transitions) with errors that name the file."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


def read_npz(path: str | Path, what: str, error: type[Exception]) -> dict[str, np.ndarray]:
    """Every array of the `.npz` archive at `path` (pickles refused). Raises `error` with
    "PATH: no such WHAT file" when it is missing and "PATH: not a readable .npz archive (...)"
    when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what} file")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise error(f"{path}: not a readable .npz archive ({type(err).__name__}: {err})") from None
