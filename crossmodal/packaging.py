"""`python -m crossmodal package`: zip the plugin folder into a .difypkg as Dify expects
(manifest.yaml at the root), leaving out what .difyignore names (gitignore syntax)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import yaml

from crossmodal.errors import CrossmodalError

MAX_PACKAGE_BYTES = 50 * 1024 * 1024  # Dify's default upload cap


def build_package(root: str | Path = ".", out: str | None = None) -> Path:
    import pathspec

    root = Path(root).resolve()
    manifest = root / "manifest.yaml"
    if not manifest.is_file():
        raise CrossmodalError(f"no manifest.yaml in {root}; run from the plugin folder", param="root")
    meta = yaml.safe_load(manifest.read_text(encoding="utf-8"))
    ignore_file = root / ".difyignore"
    lines = ignore_file.read_text(encoding="utf-8").splitlines() if ignore_file.is_file() else []
    spec = pathspec.PathSpec.from_lines("gitwildmatch", [*lines, ".git/", "*.difypkg"])
    target = Path(out) if out else root / f"{meta['name']}-{meta['version']}.difypkg"
    files = sorted(p for p in root.rglob("*") if p.is_file() and not spec.match_file(p.relative_to(root).as_posix()))
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            archive.write(path, path.relative_to(root).as_posix())
    size = target.stat().st_size
    if size > MAX_PACKAGE_BYTES:
        raise CrossmodalError(f"the package is {size} bytes, over Dify's {MAX_PACKAGE_BYTES}-byte cap", param="out")
    return target
