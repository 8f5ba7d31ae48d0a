"""The PP-OCRv4 model files and their ONNX Runtime sessions.

The files come from the ``rapidocr-onnxruntime`` wheel (Apache-2.0), which ships them inside its package folder:
PP-OCRv4 text detection (DB), the mobile v2.0 direction classifier and PP-OCRv4 recognition (CTC over a Chinese
and English dictionary, stored in the recognizer's metadata). The wheel is only their carrier: its folder is found
on sys.path by ``importlib.machinery.PathFinder``, which runs no module of it, so neither its code nor OpenCV
(whose build needs libGL) is ever imported here. The graphs are rewritten in memory first (fusion.py), and sessions are made once
per process and shared (``InferenceSession.run`` is thread-safe).
"""

from __future__ import annotations

import importlib.machinery
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossmodal.errors import CrossmodalError
from crossmodal.locations import data_root
from crossmodal.ocr.fusion import fused_model_bytes

logger = logging.getLogger(__name__)

MODEL_PACKAGE = "rapidocr_onnxruntime"
MODEL_REQUIREMENT = "rapidocr-onnxruntime==1.4.4"
MODEL_FILES = {
    "detection": "ch_PP-OCRv4_det_infer.onnx",
    "direction": "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    "recognition": "ch_PP-OCRv4_rec_infer.onnx",
}
# Intra-op threads per session: every core this process may use, capped (more than 8 buys these small
# convolutional models little and takes cores from the other lanes). The threads do not spin between operators:
# on a 2-core machine shared with other work, spinning cost 13-22 % more CPU for the same batches, CPU that
# the query lane needs.
MAX_THREADS = 8
THREADS_ENV = "CROSSMODAL_OCR_THREADS"


def model_directory() -> Path:
    """Where the wheel keeps the .onnx files, found on sys.path without importing the wheel's code (PathFinder
    looks at folders only; no import hook, and no module of the package, runs)."""
    spec = importlib.machinery.PathFinder.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CrossmodalError(f"OCR needs the model files of {MODEL_REQUIREMENT} (Python < 3.13): "
                              f"pip install '{MODEL_REQUIREMENT}'", param="ocr", status=503)
    directory = Path(next(iter(spec.submodule_search_locations))) / "models"
    missing = [name for name in MODEL_FILES.values() if not (directory / name).is_file()]
    if missing:
        raise CrossmodalError(f"{directory} lacks {', '.join(missing)}: reinstall {MODEL_REQUIREMENT}",
                              param="ocr", status=503)
    return directory


def default_threads() -> int:
    if os.environ.get(THREADS_ENV, "").strip():
        return max(1, int(os.environ[THREADS_ENV]))
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_THREADS, available))


@dataclass(frozen=True)
class OcrModels:
    detection: object  # onnxruntime.InferenceSession
    direction: object
    recognition: object
    characters: tuple[str, ...]  # CTC classes: blank first, the dictionary, then the space
    threads: int


USED_MARK = "warm-ocr"  # in the data root, once a call has used the models
_models: OcrModels | None = None
_models_lock = threading.Lock()


def load_models() -> OcrModels:
    """The process's sessions, made on first use."""
    global _models
    if _models is None:
        with _models_lock:
            if _models is None:
                _models = _make_models(model_directory(), default_threads())
                _mark_used()
    return _models


def _mark_used() -> None:
    """A mark in the data root: the next start makes the sessions ahead of use (crossmodal/encoders/warmup.py)."""
    try:
        root = data_root()
        root.mkdir(parents=True, exist_ok=True)
        (root / USED_MARK).touch()
    except OSError as exc:  # a read-only data root costs only the warm start
        logger.warning("cannot remember the OCR models to warm: %s", exc)


def _make_models(directory: Path, threads: int, shared_arena: bool = True) -> OcrModels:
    import onnxruntime as ort

    options = _session_options(ort, threads, shared_arena)

    def session(kind: str):
        return ort.InferenceSession(fused_model_bytes(str(directory / MODEL_FILES[kind])), options,
                                    providers=["CPUExecutionProvider"])

    recognition = session("recognition")
    dictionary = recognition.get_modelmeta().custom_metadata_map.get("character")
    if not dictionary:
        raise CrossmodalError(f"{MODEL_FILES['recognition']} carries no character list: reinstall {MODEL_REQUIREMENT}",
                              param="ocr", status=503)
    characters = ("", *dictionary.splitlines(), " ")
    classes = recognition.get_outputs()[0].shape[-1]
    if isinstance(classes, int) and classes != len(characters):
        raise CrossmodalError(f"the recognizer has {classes} classes but its dictionary {len(characters)}",
                              param="ocr", status=503)
    return OcrModels(session("detection"), session("direction"), recognition, characters, threads)


def _session_options(ort, threads: int, shared_arena: bool):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The arena stays on (rapidocr turns it off): widths change with every batch, and without it each run
    # allocates its activations afresh, which measured 1.2-4x slower here. The three sessions share one arena:
    # a reading runs them one after another, so detection's peak is reused by recognition instead of each
    # session growing its own (benchmarks/bench_ocr.py --memory: 334 MB against 663 MB, the same speed).
    options.enable_cpu_mem_arena = True
    if shared_arena and _register_shared_arena(ort):
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.log_severity_level = 3
    return options


_arena_registered: bool | None = None


def _register_shared_arena(ort) -> bool:
    """One CPU arena in ONNX Runtime's environment (once per process), for the sessions that opt in."""
    global _arena_registered
    if _arena_registered is None:
        try:
            memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            # max_mem 0 (no cap), extend by powers of two (kSameAsRequested measured no saving), defaults.
            ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, 0, -1, -1))
            _arena_registered = True
        except Exception as exc:  # noqa: BLE001 - ONNX Runtime's own Fail derives from Exception alone
            logger.warning("OCR sessions keep an arena each (cannot share one: %s)", exc)
            _arena_registered = False
    return _arena_registered


def run(session, batch: np.ndarray) -> np.ndarray:
    """The first output of a one-input session."""
    return session.run(None, {session.get_inputs()[0].name: batch})[0]
