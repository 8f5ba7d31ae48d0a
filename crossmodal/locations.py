"""Where the pack keeps its files: the data root, each workspace's store, the model cache.

Outside Dify: ``$CROSSMODAL_HOME`` or ``~/.crossmodal``, and the Hugging Face defaults.

Inside Dify's plugin daemon (a local install) ``$HOME`` is the container's ``/root``, which Dify's compose
file does not persist, and the working directory is ``<storage>/cwd/<author>/<name>-<version>@<hash>``,
which a plugin upgrade replaces. So the data root is ``<storage>/crossmodal-data``: in the persisted volume,
beside the version folders, and the same for every version. The model cache goes under it too, so that
recreating the container does not download the models again.

Whenever this process is a plugin (any install method: the daemon says so in ``INSTALL_METHOD``), it serves
every workspace of a Dify, so what a workspace types is never a path of this machine: ``data_dir`` is a name,
and ``model`` and ``hf_cache_dir`` may name a folder only under one the admin lists in ``CROSSMODAL_MODEL_ROOTS``.
The rule fails closed: it does not depend on the working directory looking like the daemon's. An admin who
runs the plugin for one workspace of their own (or its tests) may allow paths with ``CROSSMODAL_ALLOW_PATHS=1``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from pathlib import Path

from crossmodal.errors import CrossmodalError

DATA_DIR_ENV = "CROSSMODAL_HOME"
DIFY_DATA_FOLDER = "crossmodal-data"
# The daemon's working directory for one installed version: <name>-<version>@<checksum>.
VERSION_FOLDER = re.compile(r"^[a-z0-9_-]+-[0-9A-Za-z.+_-]+@[0-9a-f]+$")
WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


PLUGIN_INSTALL_METHODS = ("local", "remote", "serverless", "aws_lambda")
ALLOW_PATHS_ENV = "CROSSMODAL_ALLOW_PATHS"
MODEL_ROOTS_ENV = "CROSSMODAL_MODEL_ROOTS"


def running_as_plugin() -> bool:
    """Whether this process serves Dify's workspaces (the daemon started it, or its remote debugging does)."""
    return os.environ.get("INSTALL_METHOD", "").strip().lower() in PLUGIN_INSTALL_METHODS


def paths_allowed() -> bool:
    """Whether callers may name paths of this machine: outside a plugin, or where the admin allows it."""
    return not running_as_plugin() or os.environ.get(ALLOW_PATHS_ENV, "").strip() == "1"


def model_roots() -> list[Path]:
    return [Path(p).expanduser().resolve() for p in os.environ.get(MODEL_ROOTS_ENV, "").split(os.pathsep) if p]


def check_workspace_path(value: str, param: str) -> str:
    """``value`` (a folder a caller names) when paths are allowed or it lies under one of the admin's model
    roots; otherwise an error that says neither whether it exists nor what is there."""
    if paths_allowed():
        return value
    resolved = Path(value).expanduser().resolve()
    if any(resolved == root or root in resolved.parents for root in model_roots()):
        return str(resolved)
    raise CrossmodalError(f"inside Dify this names no folder of the plugin's machine (one plugin serves every "
                          "workspace); use a preset or a Hugging Face id, or ask the admin to list the folder's "
                          f"parent in {MODEL_ROOTS_ENV}", param=param)


def dify_storage_root() -> Path | None:
    """The daemon's persisted storage folder when this process is a plugin it started, else None."""
    if os.environ.get("INSTALL_METHOD") != "local":
        return None
    cwd = Path.cwd()
    if not VERSION_FOLDER.match(cwd.name):
        return None  # `python -m main` run by hand from a checkout
    working = os.environ.get("PLUGIN_WORKING_PATH")
    cwd_root = Path(working).resolve() if working else cwd.parents[1]
    if cwd_root not in cwd.resolve().parents:
        return None
    return cwd_root.parent


def data_root() -> Path:
    """$CROSSMODAL_HOME, else the persisted folder inside Dify, else ~/.crossmodal."""
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    storage = dify_storage_root()
    if storage is not None:
        return storage / DIFY_DATA_FOLDER
    return Path.home() / ".crossmodal"


def model_cache_dir() -> str | None:
    """$HF_HOME/hub when set; inside Dify, under the data root; else None (huggingface_hub's default)."""
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if dify_storage_root() is not None:
        return str(data_root() / "huggingface" / "hub")
    return None


def resolve_data_dir(value: str | None, store_key: str | None = None) -> Path:
    """The embedded store's folder for a ``data_dir`` setting and a ``store_key``.

    Outside Dify data_dir is a path. Inside Dify one process serves every workspace, so a path would let one
    workspace read another's data or any folder of the container: there ``data_dir`` is a name (letters,
    digits, '-', '_') for a folder under the data root's ``workspaces/``; empty means the shared default (the
    module's text says when paths are allowed).

    A store key binds the store to a secret: the folder is ``keyed/<HMAC-SHA256(key, name)>`` under the data
    root (outside Dify: under the data_dir path), so a name alone, known or guessed, reaches nothing. The same
    key and name in two workspaces is a deliberate share."""
    key = check_store_key(store_key)
    inside_dify = not paths_allowed()
    value = (value or "").strip()
    if not inside_dify:
        base = Path(value).expanduser() if value else data_root()
        return base / KEYED_FOLDER / keyed_name(key, "") if key else base
    plain, keyed = store_locations(data_root(), value, key)
    return keyed if key else plain


STORE_KEY_MIN_CHARS = 16
KEYED_FOLDER = "keyed"


def check_store_key(store_key: str | None) -> str:
    key = (store_key or "").strip()
    if key and len(key) < STORE_KEY_MIN_CHARS:
        raise CrossmodalError(f"is {len(key)} characters; a store key needs at least {STORE_KEY_MIN_CHARS} (a "
                              "random one, e.g. from `openssl rand -hex 16`): a short key can be guessed",
                              param="store_key")
    return key


def keyed_name(key: str, name: str) -> str:
    """The folder of the store ``name`` under ``key``: an HMAC, so the folder tells neither key nor name."""
    return hmac.new(key.encode(), b"crossmodal-store\0" + name.encode(), hashlib.sha256).hexdigest()[:32]


def store_locations(root: Path, name: str, key: str | None) -> tuple[Path, Path | None]:
    """Inside Dify's layout under the data root ``root``: the store ``name``'s folder without a key, and under
    ``key`` (None without one)."""
    if name and not WORKSPACE_NAME.match(name):
        raise CrossmodalError(
            f"'{name}' is not a store name: inside Dify data_dir is a name of letters, digits, '-' and '_' "
            "(at most 64), such as 'marketing', kept under the plugin's persisted data folder; paths are refused",
            param="data_dir")
    plain = root / "workspaces" / name if name else root
    keyed = root / KEYED_FOLDER / keyed_name(key, name) if key else None
    for folder in filter(None, (plain, keyed)):
        if folder != root and root.resolve() not in folder.resolve().parents:
            raise CrossmodalError(f"'{name}' leads outside the plugin's data folder (a symbolic link); "
                                  "choose another name", param="data_dir")
    return plain, keyed


# What a store keeps in its folder (crossmodal/store/edge.py, crossmodal/alignment/calibration.py).
STORE_CONTENTS = ("collections", "calibration")


def move_store_under_key(root: Path, name: str, key: str) -> dict:
    """Move the store ``name`` (empty: the shared one) of the data root ``root`` under ``key``: what a store
    made before store keys needs to be found by the key. Renames only (nothing is copied, nothing can be half
    written); refused while a collection of it is open in a running plugin, or when the keyed store exists."""
    key = check_store_key(key)
    if not key:
        raise CrossmodalError("give the store key to move the store under", param="store_key")
    plain, keyed = store_locations(root, name, key)
    present = [part for part in STORE_CONTENTS if (plain / part).exists()]
    if not present:
        raise CrossmodalError(f"no store '{name or '(shared)'}' under {root}", param="data_dir", status=404)
    if any((keyed / part).exists() for part in STORE_CONTENTS):
        raise CrossmodalError("a store already exists under this key and name; it is left as it is",
                              param="store_key", status=409)
    _refuse_open_collections(plain / "collections")
    keyed.mkdir(parents=True, exist_ok=True)
    for part in present:
        os.replace(plain / part, keyed / part)
    collections = sorted(p.name for p in (keyed / "collections").iterdir()) if (keyed / "collections").is_dir() else []
    return {"store": name or "(shared)", "moved": present, "collections": collections, "folder": keyed.name}


def _refuse_open_collections(collections: Path) -> None:
    import fcntl

    for lock_file in sorted(collections.glob("*/.lock")):
        with open(lock_file, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise CrossmodalError(f"collection '{lock_file.parent.name}' is open in a running plugin or command; "
                                      "stop it (or wait until the plugin is idle) and run this again",
                                      status=409) from None
            fcntl.flock(handle, fcntl.LOCK_UN)
