"""Rerank throughput: a MiniLM-L6-size cross-encoder (pairs/s) and region rescoring of 20 image candidates
with a ViT-B/32-size CLIP, fp32 and bf16, beside the fp32 hardware limit measured in the same run
(matmul peak / FLOPs per pair). Random weights: the speed is the real models'.

    python benchmarks/bench_rerank.py [--pairs 256]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_ingest import save_vit_b32  # noqa: E402
from benchmarks.common import matmul_peak_gflops, save, table  # noqa: E402

SEQ_LEN = 64  # query + passage tokens per pair


def minilm_flops_per_pair(hidden=384, intermediate=1536, layers=6, seq=SEQ_LEN) -> float:
    per_token_layer = 2 * (4 * hidden * hidden + 2 * hidden * intermediate) + 2 * 2 * seq * hidden
    return per_token_layer * layers * seq


def save_minilm_cross_encoder(directory: Path, initializer_range: float = 0.02) -> Path:
    """cross-encoder/ms-marco-MiniLM-L-6-v2's shape (6 layers, 384 wide, 30,522-token vocabulary)."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    words = [f"w{i}" for i in range(30517)]
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    BertTokenizerFast(vocab_file=str(directory / "vocab.txt")).save_pretrained(directory)
    config = BertConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=12,
                        num_labels=1, initializer_range=initializer_range)
    BertForSequenceClassification(config).save_pretrained(directory)
    return directory


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    args = parser.parse_args(argv)

    import torch

    from crossmodal.encoders.models import load_encoder
    from crossmodal.rerank.scoring import Candidate, cross_encoder_scores, load_cross_encoder, region_scores
    from crossmodal.lab.scenes import generate_scene

    peak = matmul_peak_gflops()
    limit = peak / (minilm_flops_per_pair() / 1e9)
    rows = [{"what": "fp32 limit, cross-encoder (matmul peak / FLOPs per pair)", "per_s": round(limit, 1)}]
    query = " ".join(f"w{i}" for i in range(8))
    passages = [" ".join(f"w{(i * 7 + j) % 30000}" for j in range(SEQ_LEN - 11)) for i in range(args.pairs)]
    with tempfile.TemporaryDirectory() as tmp:
        model = load_cross_encoder(str(save_minilm_cross_encoder(Path(tmp) / "ce")))
        candidates = [Candidate(str(i), text=p) for i, p in enumerate(passages)]
        for bf16 in (False, True):
            cross_encoder_scores(model, query, candidates[:32], bf16=bf16)
            started = time.perf_counter()
            cross_encoder_scores(model, query, candidates, bf16=bf16)
            seconds = time.perf_counter() - started
            rows.append({"what": f"cross-encoder MiniLM-L6 size, {'bf16' if bf16 else 'fp32'}, batch 32",
                         "per_s": round(args.pairs / seconds, 1), "of_limit": round(args.pairs / seconds / limit, 2)})
        encoder = load_encoder(str(save_vit_b32(Path(tmp) / "clip")), "cpu")
        images = [Candidate(str(k), image=generate_scene(k, 384, 384, 2).image.convert("RGB")) for k in range(20)]
        for precision in ("fp32", "bf16"):
            used = encoder.use_precision(precision)
            region_scores(encoder, "a red circle and a blue star", images[:2])
            started = time.perf_counter()
            region_scores(encoder, "a red circle and a blue star", images)
            seconds = time.perf_counter() - started
            rows.append({"what": f"region rerank, 20 candidates x 10 views, ViT-B/32 size, {used}",
                         "per_s": round(20 / seconds, 1), "ms": round(seconds * 1000)})
    print(f"fp32 matmul peak {peak:.0f} GFLOP/s; torch threads {torch.get_num_threads()}")
    print(table(rows, ["what", "per_s", "of_limit", "ms"]))
    out = {"matmul_peak_gflops": round(peak, 1), "rows": rows}
    print(f"saved {save('rerank', out)}")
    return out


if __name__ == "__main__":
    main()
