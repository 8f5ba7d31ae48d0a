"""Models loaded at plugin start, before the first call needs them.

Dify's External Knowledge calls give the plugin 5 s; loading a model takes longer. Each model such a call
used is remembered in the data root, and the next plugin start (a restart, an upgrade) loads those models
in the worker process's load lane while the plugin already answers.

The OCR models are remembered the same way once a call has used them, and warmed unless the admin's default
turns reading off. Making their sessions takes about 2 s of one core and 200 MB: imports and graph rewrites
that hold the interpreter lock, so every other call of the worker waits meanwhile. Without the warm-up the
first Align or image ingest after a start pays that while queries wait (the soak's cold round).
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


def ocr_remembered() -> bool:
    """The OCR models were used (crossmodal/ocr/models.py leaves a mark), and calls read text unless they ask
    not to: an admin who set the default to false (CROSSMODAL_OCR_DEFAULT) has them made only when asked."""
    from crossmodal.errors import CrossmodalError
    from crossmodal.ingest.ocr import check_ocr
    from crossmodal.ocr.models import USED_MARK

    # The worker calls this as it starts: nothing here may raise, or the worker dies at every start (a misspelt
    # default is reported by the calls that read text; an unreadable data root costs only the warm start).
    try:
        return (data_root() / USED_MARK).is_file() and check_ocr(None) != "false"
    except (CrossmodalError, OSError) as exc:
        logger.warning("not warming the OCR models: %s", exc)
        return False


def warm_remembered():
    """Load the remembered models in the load lane (crossmodal/lanes.py): the worker process calls this when
    it starts, so the plugin answers meanwhile and queries keep their own threads."""
    from crossmodal.lanes import LOAD, Job, submit

    entries, ocr = remembered(), ocr_remembered()
    if not (entries or ocr):
        return None
    job = Job(_load, (entries, ocr), lane=LOAD, name="warm-up")
    submit(job)
    return job  # its ``finished`` turns true when the warm-up has ended


def _load(entries: list[dict], ocr: bool = False) -> None:
    from crossmodal.encoders.models import HubOptions, get_encoder

    for entry in entries:  # first: External Knowledge has 5 s
        try:
            get_encoder(entry["model"], entry.get("device"), HubOptions.from_env(), entry.get("precision", "fp32"))
            logger.info("warmed %s", entry["model"])
        except Exception as exc:  # noqa: BLE001 - a model that cannot load now is loaded (and reported) on use
            logger.warning("could not warm %s: %s", entry["model"], redact(str(exc)))
    if ocr:
        try:
            from crossmodal.ocr.models import load_models

            load_models()
            logger.info("warmed the OCR models")
        except Exception as exc:  # noqa: BLE001 - e.g. the OCR package is missing: reported on use
            logger.warning("could not warm the OCR models: %s", redact(str(exc)))
