"""Late-interaction retrievers (``*ForRetrieval`` checkpoints: ColQwen2, ColModernVBert) with random weights,
saved as transformers saves the published ones, which sentence-transformers' MultiVectorEncoder loads: the
tests' tiny models and the benchmarks' real-size ones (a page's speed needs no training; no weights can be
downloaded here). Vocabularies are small byte-level BPEs with each family's special tokens: an embedding is a
lookup, so this changes no FLOP. Neither processor needs torchvision.
"""

from __future__ import annotations

from pathlib import Path

from crossmodal.lab.vlm_models import QWEN_SPECIALS, byte_level_bpe, qwen_tokenizer

# ColQwen2's backbone sizes: "tiny" for tests, "2b" = Qwen2-VL-2B's (vidore/colqwen2-v1.0 is fine-tuned from it).
COLQWEN2_SIZES = {
    "tiny": {"text": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
             "vision": dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)},
    "2b": {"text": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                        num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]}),
           "vision": dict(depth=32, embed_dim=1280, hidden_size=1536, num_heads=16, mlp_ratio=4)},
}


def save_colqwen2(directory: Path, *, seed: int = 2, embedding_dim: int = 16, max_pixels: int = 28 * 28 * 64,
                  size: str = "tiny", dtype: str = "float32") -> Path:
    """A ColQwen2 with random weights (Qwen2-VL with a projection per token; the tests' tiny one has 16-d token
    vectors, the published one 128), saved as transformers saves the published ``*ForRetrieval`` checkpoints;
    sentence-transformers' MultiVectorEncoder loads it. Its processor needs no torchvision."""
    import torch
    from transformers import ColQwen2Config, ColQwen2ForRetrieval, ColQwen2Processor, Qwen2VLImageProcessor

    torch.manual_seed(seed)
    tokenizer = qwen_tokenizer()
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    vlm = dict(model_type="qwen2_vl",
               text_config=dict(vocab_size=len(tokenizer), max_position_embeddings=8192,
                                bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"],
                                pad_token_id=ids["<|endoftext|>"], **COLQWEN2_SIZES[size]["text"]),
               vision_config=dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                                  **COLQWEN2_SIZES[size]["vision"]),
               image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
               vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    with torch.no_grad():
        model = ColQwen2ForRetrieval(ColQwen2Config(vlm_config=vlm, embedding_dim=embedding_dim)).to(getattr(torch, dtype))
    model.save_pretrained(directory)
    del model
    images = Qwen2VLImageProcessor(patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=28 * 28 * 4,
                                   max_pixels=max_pixels)
    ColQwen2Processor(image_processor=images, tokenizer=tokenizer).save_pretrained(directory)
    return Path(directory)


# ColModernVBert (ModernVBERT/colmodernvbert): a SigLIP2 vision tower (base, 512-px tiles of 16-px patches, pixel
# shuffle 4: 64 tokens a tile) and ModernBERT-base; Idefics3's processor cuts a page into tiles within 2,048 px
# and adds the whole page as one more tile. "tiny" for tests: 64-px tiles, 4 tokens each.
COLMODERNVBERT_SIZES = {
    "tiny": {"text": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2),
             "vision": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=64, patch_size=16),
             "pixel_shuffle_factor": 2, "embedding_dim": 16},
    "base": {"text": dict(hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12),
             "vision": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            image_size=512, patch_size=16),
             "pixel_shuffle_factor": 4, "embedding_dim": 128},
}
MODERNVBERT_SPECIALS = (["<|begin_of_text|>", "<|end_of_text|>", "[PAD]", "[MASK]", "<fake_token_around_image>",
                         "<image>", "<global-img>", "<end_of_utterance>"]
                        + [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)])


def modernvbert_tokenizer():
    return byte_level_bpe(MODERNVBERT_SPECIALS, ["user assistant describe the image"], bos_token="<|begin_of_text|>",
                          eos_token="<|end_of_text|>", pad_token="[PAD]", mask_token="[MASK]")


def save_colmodernvbert(directory: Path, *, size: str = "tiny", seed: int = 3, dtype: str = "float32") -> Path:
    import torch
    from transformers import (ColModernVBertConfig, ColModernVBertForRetrieval, ColModernVBertProcessor,
                              Idefics3ImageProcessor)

    torch.manual_seed(seed)
    tokenizer = modernvbert_tokenizer()
    sizes = COLMODERNVBERT_SIZES[size]
    vision, shuffle = sizes["vision"], sizes["pixel_shuffle_factor"]
    vlm = dict(model_type="modernvbert", pixel_shuffle_factor=shuffle,
               image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
               text_config=dict(model_type="modernbert", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                cls_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.eos_token_id,
                                **sizes["text"]),
               vision_config=dict(model_type="siglip_vision_model", **vision))
    with torch.no_grad():
        model = ColModernVBertForRetrieval(ColModernVBertConfig(vlm_config=vlm, embedding_dim=sizes["embedding_dim"]))
        model = model.to(getattr(torch, dtype))
    model.save_pretrained(directory)
    del model
    tile = vision["image_size"]
    images = Idefics3ImageProcessor(size={"longest_edge": 4 * tile}, max_image_size={"longest_edge": tile},
                                    do_image_splitting=True)
    tokens_a_tile = (tile // vision["patch_size"]) ** 2 // shuffle ** 2
    ColModernVBertProcessor(image_processor=images, tokenizer=tokenizer, image_seq_len=tokens_a_tile).save_pretrained(
        directory)
    return Path(directory)
