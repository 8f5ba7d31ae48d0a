"""Qwen3-VL retrieval models with random weights, saved as sentence-transformers saves the published ones:
the tests' tiny models and the benchmarks' real-size ones (speed needs no training; no weights can be
downloaded here). The architecture sizes are Qwen3-VL-2B's (Qwen3-VL-Embedding-2B and -Reranker-2B are
fine-tuned from it); the vocabulary is a small byte-level BPE with Qwen's special tokens, which changes no
FLOP of an embedding (a lookup) and saves 300 M parameters of memory.

The Qwen3-VL processor needs torchvision (its video part).
"""

from __future__ import annotations

import shutil
from pathlib import Path

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
QUERY_PROMPT = "Retrieve images or text relevant to the user's query."
DOCUMENT_PROMPT = "Represent the user's input."
# A chat template of the shape of Qwen's: a system prompt (the instruction) and a user turn of images and texts.
EMBEDDING_TEMPLATE = (
    "{%- for message in messages -%}<|im_start|>{{ message.role }}\n"
    "{%- if message.content is string -%}{{ message.content }}{%- else -%}"
    "{%- for part in message.content -%}"
    "{%- if part.type == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part.type == 'video' -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif part.type == 'text' -%}{{ part.text }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "<|im_end|>\n{%- endfor -%}{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}")
# The reranker's: the instruction comes as a system message, the pair as 'query' and 'document' messages.
RERANKER_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n"
    "{%- set ns = namespace(instruction='Given a search query, retrieve relevant candidates that answer the query.') -%}"
    "{%- for m in messages if m.role == 'system' -%}"
    "{%- set ns.instruction = m.content if m.content is string else m.content[0].text -%}{%- endfor -%}"
    "<Instruct>: {{ ns.instruction }}"
    "{%- for m in messages if m.role in ('query', 'document') -%}"
    "{{ '\n<Query>:' if m.role == 'query' else '\n<Document>:' }}"
    "{%- if m.content is string -%}{{ m.content }}{%- else -%}{%- for part in m.content -%}"
    "{%- if part.type == 'image' -%}<|vision_start|><|image_pad|><|vision_end|>"
    "{%- elif part.type == 'video' -%}<|vision_start|><|video_pad|><|vision_end|>"
    "{%- elif part.type == 'text' -%}{{ part.text }}{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}<|im_end|>\n<|im_start|>assistant\n")

# Tower sizes: "tiny" for tests (text 64 wide, so Matryoshka sizes 32 and up), "2b" = Qwen3-VL-2B's.
SIZES = {
    "tiny": {"text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, head_dim=16, mrope_section=[4, 2, 2]),
             "vision": dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, num_position_embeddings=64,
                            deepstack_visual_indexes=[1])},
    "2b": {"text": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                        num_key_value_heads=8, head_dim=128, mrope_section=[24, 20, 20]),
           "vision": dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16,
                          num_position_embeddings=2304, deepstack_visual_indexes=[5, 11, 17])},
}


def byte_level_bpe(special_tokens: list[str], corpus: list[str], **roles):
    """A small byte-level BPE (any text encodes) trained on ``corpus`` with a family's special tokens, as a fast
    tokenizer with those ``roles`` (eos_token=..., pad_token=...)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from crossmodal.lab.scenes import COLORS, SHAPES

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=special_tokens,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([" ".join(COLORS), " ".join(SHAPES), *corpus], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **roles)


def qwen_tokenizer():
    """Qwen's special tokens, and 'yes' / 'no' as single tokens (the reranker's answer)."""
    fast = byte_level_bpe(QWEN_SPECIALS, [QUERY_PROMPT.lower(), DOCUMENT_PROMPT.lower(),
                                          "a the on left right top bottom and picture photo of yes no"],
                          eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left")
    fast.add_tokens(["yes", "no"])
    return fast


def qwen3_vl_parts(size: str, seed: int, max_pixels: int):
    """(config, tokenizer, image processor, video processor) of a Qwen3-VL of ``size`` (patch 16, merge 2)."""
    import torch
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    text = dict(SIZES[size]["text"])
    mrope = text.pop("mrope_section")
    config = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=8192, pad_token_id=ids["<|endoftext|>"],
                         rope_parameters={"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": mrope,
                                          "mrope_interleaved": True}, **text),
        vision_config=dict(patch_size=16, spatial_merge_size=2, temporal_patch_size=2,
                           out_hidden_size=text["hidden_size"], **SIZES[size]["vision"]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    images = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                   size={"shortest_edge": 32 * 32 * 4, "longest_edge": max_pixels})
    videos = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2)
    return config, tokenizer, images, videos


def save_qwen3_vl_embedding(directory: Path, *, size: str = "tiny", seed: int = 0, max_pixels: int = 32 * 32 * 64,
                            dtype: str = "float32") -> Path:
    """Transformer (feature extraction, chat messages with a generation prompt) -> last-token Pooling ->
    Normalize, with the query and document prompts of Qwen3-VL-Embedding's card."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
    from transformers import Qwen3VLModel

    backbone = _save_backbone(Path(directory), Qwen3VLModel, EMBEDDING_TEMPLATE, size, seed, max_pixels, dtype)
    transformer = Transformer(str(backbone), transformer_task="feature-extraction",
                              processing_kwargs={"chat_template": {"add_generation_prompt": True}})
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension(), "lasttoken"),
                                         Normalize()],
                                prompts={"query": QUERY_PROMPT, "document": DOCUMENT_PROMPT}, device="cpu")
    model.save(str(directory))
    shutil.rmtree(backbone, ignore_errors=True)
    return Path(directory)


def save_qwen3_vl_reranker(directory: Path, *, size: str = "tiny", seed: int = 1, max_pixels: int = 32 * 32 * 64,
                           dtype: str = "float32") -> Path:
    """Transformer (any-to-any) -> LogitScore(yes, no): Qwen3-VL-Reranker's scoring."""
    from sentence_transformers import CrossEncoder
    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.cross_encoder.modules.logit_score import LogitScore
    from transformers import Qwen3VLForConditionalGeneration

    backbone = _save_backbone(Path(directory), Qwen3VLForConditionalGeneration, RERANKER_TEMPLATE, size, seed,
                              max_pixels, dtype)
    transformer = Transformer(str(backbone), transformer_task="any-to-any")
    tokenizer = transformer.tokenizer
    yes, no = tokenizer.convert_tokens_to_ids("yes"), tokenizer.convert_tokens_to_ids("no")
    CrossEncoder(modules=[transformer, LogitScore(yes, no)], device="cpu").save(str(directory))
    shutil.rmtree(backbone, ignore_errors=True)
    return Path(directory)


def _save_backbone(directory: Path, model_class, template: str, size: str, seed: int, max_pixels: int,
                   dtype: str) -> Path:
    import torch
    from transformers import Qwen3VLProcessor

    config, tokenizer, images, videos = qwen3_vl_parts(size, seed, max_pixels)
    backbone = directory / "backbone"
    with torch.no_grad():
        model = model_class(config).to(getattr(torch, dtype))
    model.save_pretrained(backbone)
    del model
    Qwen3VLProcessor(image_processor=images, tokenizer=tokenizer, video_processor=videos,
                     chat_template=template).save_pretrained(backbone)
    return backbone
