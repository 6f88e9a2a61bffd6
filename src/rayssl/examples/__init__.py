"""The example configs that come with rayssl: `configs/` (runs) and `tune_configs/` (searches,
whose `base:` names a run config as `../configs/<name>.yaml`). `rayssl configs` lists them
and copies both folders, side by side, where a user wants them."""

from __future__ import annotations

import shutil
from pathlib import Path

HERE = Path(__file__).parent
FOLDERS = ("configs", "tune_configs")


def listing() -> list[tuple[str, str]]:
    """(folder/name.yaml, its first comment line or method) for every example."""
    rows = []
    for folder in FOLDERS:
        for path in sorted((HERE / folder).glob("*.yaml")):
            first = path.read_text().splitlines()[0] if path.stat().st_size else ""
            rows.append((f"{folder}/{path.name}", first.lstrip("# ").strip()))
    return rows


def copy_to(out: Path) -> list[Path]:
    """Copy both folders into `out` (made if missing); refuse to overwrite a file there."""
    clashes = [out / f for f in FOLDERS if (out / f).exists()]
    if clashes:
        raise FileExistsError(
            f"'{clashes[0]}' exists; give a folder without configs/ and tune_configs/"
        )
    out.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copytree(HERE / f, out / f)) for f in FOLDERS]
