"""Where the pack keeps its files: the data root, each workspace's store, the model cache.

Outside Dify: ``$CROSSMODAL_HOME`` or ``~/.crossmodal``, and the Hugging Face defaults.

Inside Dify's plugin daemon (a local install) ``$HOME`` is the container's ``/root``, which Dify's compose
file does not persist, and the working directory is ``<storage>/cwd/<author>/<name>-<version>@<hash>``,
which a plugin upgrade replaces. So the data root is ``<storage>/crossmodal-data``: in the persisted volume,
beside the version folders, and the same for every version. The model cache goes under it too, so that
recreating the container does not download the models again.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from crossmodal.errors import CrossmodalError

DATA_DIR_ENV = "CROSSMODAL_HOME"
DIFY_DATA_FOLDER = "crossmodal-data"
# The daemon's working directory for one installed version: <name>-<version>@<checksum>.
VERSION_FOLDER = re.compile(r"^[a-z0-9_-]+-[0-9A-Za-z.+_-]+@[0-9a-f]+$")
WORKSPACE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


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


def resolve_data_dir(value: str | None) -> Path:
    """The embedded store's folder for a ``data_dir`` setting.

    Outside Dify it is a path. Inside Dify one process serves every workspace, so a path would let one
    workspace read another's data or any folder of the container: there ``data_dir`` is a name (letters,
    digits, '-', '_') for a folder under the data root's ``workspaces/``; empty means the shared default."""
    value = (value or "").strip()
    if dify_storage_root() is None:
        return Path(value).expanduser() if value else data_root()
    root = data_root()
    if not value:
        return root
    if not WORKSPACE_NAME.match(value):
        raise CrossmodalError(
            f"'{value}' is not a store name: inside Dify data_dir is a name of letters, digits, '-' and '_' "
            "(at most 64), such as 'marketing', kept under the plugin's persisted data folder; paths are refused",
            param="data_dir")
    folder = root / "workspaces" / value
    resolved = folder.resolve()
    if root.resolve() not in resolved.parents:
        raise CrossmodalError(f"'{value}' leads outside the plugin's data folder (a symbolic link); "
                              "choose another name", param="data_dir")
    return folder
