"""Settings shared by every adapter: where the store is, which model, how to reach the hub."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from crossmodal.limits import parse_workspace_limits
from crossmodal.locations import check_workspace_path, data_root, resolve_data_dir
from crossmodal.encoders.model_ref import ModelOptions
from crossmodal.encoders.models import HubOptions

DEFAULT_COLLECTION = "crossmodal"


def default_data_dir() -> Path:
    """$CROSSMODAL_HOME, else the persisted data folder inside Dify, else ~/.crossmodal (crossmodal/locations.py)."""
    return data_root()


def _text(value) -> str | None:
    value = "" if value is None else str(value).strip()
    return value or None


def _cache_dir(value) -> str | None:
    """A workspace's hf_cache_dir: inside Dify only under the admin's model roots (crossmodal/locations.py)."""
    value = _text(value)
    return check_workspace_path(value, "hf_cache_dir") if value else None


def _flag(value) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    store_url: str | None = None  # empty: the embedded store
    store_api_key: str | None = field(default=None, repr=False)
    data_dir: str | None = None
    store_key: str | None = field(default=None, repr=False)  # binds the embedded store to a secret (locations.py)
    collection: str = DEFAULT_COLLECTION
    model: str = "auto"
    device: str = "auto"
    routes: str | None = None  # JSON route table (crossmodal/encoders/routing.py); empty: the defaults
    url_allowlist: str | None = None  # hosts image URLs may reach even when they resolve to internal addresses
    precision: str = "fp32"  # fp32 | bf16 (checked against fp32 on first use; see Encoder.use_precision)
    storage: str | None = None  # how new collections keep their vectors (crossmodal/store/options.py)
    # dimension, max_pixels, instruction of VLM models (crossmodal/encoders/model_ref.py); dual encoders take none
    model_options: ModelOptions = field(default_factory=ModelOptions)
    hub: HubOptions = field(default_factory=HubOptions.from_env)
    # The workspace's narrower limits ({name: value}, crossmodal/limits.py): never wider than the admin's.
    limits: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def caller(self) -> str:
        """Whose calls these are, for each caller's share of the lanes' queues (crossmodal/lanes.py): the store
        they reach (one workspace's, told apart by store_url, data_dir and store_key), as a short one-way name."""
        reach = "\0".join(part or "" for part in (self.store_url, self.data_dir, self.store_key))
        return hashlib.sha256(b"crossmodal-caller\0" + reach.encode()).hexdigest()[:12]

    def store_dir(self) -> Path:
        """The embedded store's folder (inside Dify, data_dir is a name, never a path: see resolve_data_dir)."""
        return resolve_data_dir(self.data_dir, self.store_key)

    @classmethod
    def from_credentials(cls, credentials: dict | None) -> "Settings":
        """Build from the provider credentials Dify stores (every key optional)."""
        c = credentials or {}
        env_hub = HubOptions.from_env()
        return cls(
            store_url=_text(c.get("store_url")),
            store_api_key=_text(c.get("store_api_key")),
            data_dir=_text(c.get("data_dir")),
            store_key=_text(c.get("store_key")),
            collection=_text(c.get("default_collection")) or DEFAULT_COLLECTION,
            model=_text(c.get("model")) or "auto",
            device=_text(c.get("device")) or "auto",
            precision=_text(c.get("precision")) or "fp32",
            url_allowlist=_text(c.get("url_allowlist")),
            routes=_text(c.get("routes")),
            storage=_text(c.get("storage")),
            model_options=ModelOptions.parse({k: _text(c.get(k)) for k in ("dimension", "max_pixels", "instruction")}),
            limits=parse_workspace_limits(c.get("limits")),
            hub=HubOptions(
                endpoint=_text(c.get("hf_endpoint")) or env_hub.endpoint,
                token=_text(c.get("hf_token")) or env_hub.token,
                offline=_flag(c.get("hf_offline")) or env_hub.offline,
                cache_dir=_cache_dir(c.get("hf_cache_dir")) or env_hub.cache_dir,
            ),
        )
