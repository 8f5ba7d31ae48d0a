"""A text cross-encoder on ONNX Runtime and ``tokenizers`` alone (the lean build's text reranker).

It reads the layout sentence-transformers publishes for its cross-encoders (``onnx/model.onnx`` beside
``tokenizer.json`` and ``config.json``, as cross-encoder/ms-marco-MiniLM-L-6-v2 has on the hub) and what
``python -m crossmodal export`` writes for one, and scores as sentence-transformers' ``CrossEncoder.predict``
does: query and text read together, truncated longest-first to the model's length, the relevance logit through a
sigmoid when the model has one label (tests/test_onnx_cross_encoder.py keeps the library as the reference).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from crossmodal.encoders.int8 import fits_u8s8, session_options
from crossmodal.encoders.onnx_encoder import MANIFEST, read_manifest
from crossmodal.errors import CrossmodalError

GRAPH = "onnx/model.onnx"


def is_cross_encoder_export(directory: Path) -> bool:
    directory = Path(directory)
    return (directory / GRAPH).is_file() and not any(directory.glob("*.safetensors"))


class OnnxCrossEncoder:
    def __init__(self, directory: str | Path, threads: int | None = None):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.directory = Path(directory)
        if not is_cross_encoder_export(self.directory):
            raise CrossmodalError(f"{self.directory} holds no {GRAPH}: give an ONNX export of the cross-encoder "
                                  "(python -m crossmodal export MODEL --out DIR)", param="model")
        # Our own export: every file checked against its sha256. A published graph says nothing of its weights:
        # should it be int8, full 8-bit weights run ONNX Runtime's precise kernels on a CPU without VNNI.
        manifest = read_manifest(self.directory) if (self.directory / MANIFEST).is_file() else {}
        config = json.loads((self.directory / "config.json").read_text())
        self.labels = len(config.get("id2label") or {}) or int(config.get("num_labels", 1))
        self.max_length = _max_length(self.directory, config)
        options = session_options(threads or os.cpu_count() or 1, fits_u8s8(manifest))
        self.session = ort.InferenceSession(str(self.directory / GRAPH), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(self.directory / "tokenizer.json"))
        self.tokenizer.enable_truncation(self.max_length, strategy="longest_first")
        pad_id = self.tokenizer.padding["pad_id"] if self.tokenizer.padding else 0
        self.tokenizer.enable_padding(pad_id=pad_id)

    def predict(self, pairs: list[tuple[str, str]], batch_size: int = 32) -> np.ndarray:
        scores = []
        for start in range(0, len(pairs), batch_size):
            encodings = self.tokenizer.encode_batch(pairs[start:start + batch_size])
            feed = {"input_ids": np.asarray([e.ids for e in encodings], dtype=np.int64),
                    "attention_mask": np.asarray([e.attention_mask for e in encodings], dtype=np.int64),
                    "token_type_ids": np.asarray([e.type_ids for e in encodings], dtype=np.int64)}
            logits = self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]
            scores.append(logits.astype(np.float32))
        logits = np.concatenate(scores) if scores else np.zeros((0, self.labels), np.float32)
        # sentence-transformers' default activation: a sigmoid for one label, the logits otherwise.
        return 1.0 / (1.0 + np.exp(-logits[:, 0])) if self.labels == 1 else logits


def _max_length(directory: Path, config: dict) -> int:
    limit = int(config.get("max_position_embeddings", 512))
    try:
        saved = json.loads((directory / "tokenizer_config.json").read_text()).get("model_max_length")
    except (OSError, ValueError):
        saved = None
    return min(int(saved), limit) if isinstance(saved, (int, float)) and saved < 1e6 else limit


def export_cross_encoder(directory: Path, staging: Path) -> list[str]:
    """The torch cross-encoder in ``directory`` as ``onnx/model.onnx`` with its tokenizer and config (needs
    torch and transformers, once)."""
    import shutil
    import warnings

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from crossmodal.encoders.acceleration import ONNX_OPSET

    model = AutoModelForSequenceClassification.from_pretrained(directory).float().eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)
    sample = tokenizer(["a red circle", "a blue star"], ["a circle that is red", "nothing"], padding=True,
                       return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    (staging / "onnx").mkdir(exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, tuple(sample[n] for n in names), str(staging / GRAPH), input_names=names,
                          output_names=["logits"], dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names},
                          opset_version=ONNX_OPSET, dynamo=False)
    tokenizer.backend_tokenizer.save(str(staging / "tokenizer.json"))
    for name in ("config.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (Path(directory) / name).is_file():
            shutil.copy(Path(directory) / name, staging / name)
    return names
