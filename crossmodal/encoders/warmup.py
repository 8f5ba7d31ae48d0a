"""Models loaded at plugin start, before the first call needs them.

Dify's External Knowledge calls give the plugin 5 s; loading a model takes longer. Each model such a call
used is remembered in the data root, and the next plugin start (a restart, an upgrade) loads those models
in a worker thread while the plugin already answers.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

from crossmodal.errors import redact
from crossmodal.locations import data_root

logger = logging.getLogger(__name__)

WARM_FILE = "warm-models.json"
MAX_REMEMBERED = 4


def remembered() -> list[dict]:
    try:
        entries = json.loads((data_root() / WARM_FILE).read_text())
    except (OSError, ValueError):
        return []
    return [e for e in entries if isinstance(e, dict) and isinstance(e.get("model"), str)][:MAX_REMEMBERED]


def remember(model: str, device: str, precision: str) -> None:
    entry = {"model": model, "device": device, "precision": precision}
    entries = remembered()
    if entries and entries[0] == entry:
        return
    entries = [entry, *[e for e in entries if e != entry]][:MAX_REMEMBERED]
    root = data_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=root, delete=False, suffix=".tmp") as tmp:
            json.dump(entries, tmp)
        os.replace(tmp.name, root / WARM_FILE)
    except OSError as exc:  # a read-only data root costs only the warm start
        logger.warning("cannot remember the model to warm: %s", exc)


def warm_remembered() -> None:
    """Load the remembered models once the plugin serves (main.py calls this last): in the load lane
    (crossmodal/lanes.py), so the loop keeps answering and queries keep their own threads meanwhile."""
    from crossmodal.lanes import LOAD
    from crossmodal.runtime import gevent_patched, offload

    entries = remembered()
    if entries and gevent_patched():
        import gevent

        gevent.spawn(offload, _load, entries, lane=LOAD)


def _load(entries: list[dict]) -> None:
    from crossmodal.encoders.models import HubOptions, get_encoder

    for entry in entries:
        try:
            get_encoder(entry["model"], entry.get("device"), HubOptions.from_env(), entry.get("precision", "fp32"))
            logger.info("warmed %s", entry["model"])
        except Exception as exc:  # noqa: BLE001 - a model that cannot load now is loaded (and reported) on use
            logger.warning("could not warm %s: %s", entry["model"], redact(str(exc)))
