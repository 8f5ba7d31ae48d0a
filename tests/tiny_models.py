"""Tiny CLIP-family models with random weights, saved like real checkpoints.

They load through the production path (crossmodal.encoders.models.load_encoder), so the
tests exercise exactly the code that loads openai/clip-vit-base-patch32.
"""

from __future__ import annotations

from pathlib import Path

WORDS = ("a an the small large red green blue yellow purple orange white black circle square triangle star "
         "hexagon heart on left right top bottom centre and cat dog photo of 左 右 边 的 小 大 红 色 圆 形 星").split()


def tiny_tokenizer(context_length: int = 16):
    from crossmodal.lab.tokenizer import train_tokenizer

    return train_tokenizer([" ".join(WORDS)], context_length=context_length)


def save_tiny_clip(directory: Path, *, image_size: int = 32, projection_dim: int = 16, seed: int = 0,
                   layers: int = 2) -> Path:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=2, max_position_embeddings=16,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=projection_dim,
    )
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
    )
    CLIPModel(config).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def _tiny_text(vocab_size: int, **extra) -> dict:
    return dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, **extra)


def _tiny_vision(image_size: int = 32) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                image_size=image_size, patch_size=8)


def save_tiny_chinese_clip(directory: Path) -> Path:
    """Chinese-CLIP: a BERT text tower with a WordPiece vocabulary (CJK characters split one by one)."""
    from transformers import (BertTokenizerFast, ChineseCLIPConfig, ChineseCLIPImageProcessor, ChineseCLIPModel,
                              ChineseCLIPProcessor)

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab))
    tokenizer = BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True)
    config = ChineseCLIPConfig(text_config=_tiny_text(len(vocab)), vision_config=_tiny_vision(), projection_dim=16)
    ChineseCLIPModel(config).save_pretrained(directory)
    image_processor = ChineseCLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    ChineseCLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def save_tiny_siglip(directory: Path) -> Path:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor

    tokenizer = tiny_tokenizer()
    config = SiglipConfig(text_config=_tiny_text(len(tokenizer)), vision_config=_tiny_vision())
    SiglipModel(config).save_pretrained(directory)
    SiglipProcessor(image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}),
                    tokenizer=tokenizer).save_pretrained(directory)
    return directory


def _bert_tokenizer(directory: Path):
    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS))]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(vocab))
    return BertTokenizerFast(vocab_file=str(directory / "vocab.txt"), do_lower_case=True), len(vocab)


def save_tiny_cross_encoder(directory: Path, seed: int = 0) -> Path:
    """A MiniLM-shaped cross-encoder (BERT + one relevance logit), as cross-encoder/ms-marco-* are saved."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    tokenizer, vocab_size = _bert_tokenizer(directory)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=64, num_labels=1)
    model = BertForSequenceClassification(config)
    _spread(model)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_blip_itm(directory: Path, seed: int = 0) -> Path:
    """Salesforce/blip-itm-base-coco's architecture (ViT + BERT with cross-attention + ITM head), tiny."""
    import torch
    from transformers import BlipConfig, BlipForImageTextRetrieval, BlipImageProcessor, BlipProcessor

    torch.manual_seed(seed)
    tokenizer, vocab_size = _bert_tokenizer(directory)
    config = BlipConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16, image_text_hidden_size=16,
    )
    model = BlipForImageTextRetrieval(config)
    _spread(model)
    model.save_pretrained(directory)
    image_processor = BlipImageProcessor(size={"height": 32, "width": 32})
    BlipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def _spread(model, std: float = 0.3) -> None:
    """The default init is so small that a tiny random model scores every input alike; spread the weights
    so that different inputs get different scores (what the ranking tests need)."""
    import torch

    with torch.no_grad():
        for param in model.parameters():
            if param.dim() > 1:
                param.normal_(0, std)


def save_tiny_blip2_itm(directory: Path, seed: int = 0) -> Path:
    """Salesforce/blip2-itm-vit-g's architecture (ViT + Q-Former with ITM head), tiny."""
    import torch
    from transformers import Blip2Config, Blip2ForImageTextRetrieval, Blip2Processor, BlipImageProcessor

    torch.manual_seed(seed)
    tokenizer, vocab_size = _bert_tokenizer(directory)
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=64, encoder_hidden_size=32,
                            use_qformer_text_input=True),
        num_query_tokens=4, image_text_hidden_size=16,
    )
    model = Blip2ForImageTextRetrieval(config)
    _spread(model)
    model.save_pretrained(directory)
    Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer,
                   num_query_tokens=None).save_pretrained(directory)
    return directory


# -- Qwen3-VL retrieval models (need torchvision: the Qwen3-VL processor's video part) ------------------------
def save_tiny_qwen3_vl_embedding(directory: Path, *, seed: int = 0, max_pixels: int = 32 * 32 * 64) -> Path:
    from crossmodal.lab.vlm_models import save_qwen3_vl_embedding

    return save_qwen3_vl_embedding(directory, size="tiny", seed=seed, max_pixels=max_pixels)


def save_tiny_qwen3_vl_reranker(directory: Path, *, seed: int = 1, max_pixels: int = 32 * 32 * 64) -> Path:
    from crossmodal.lab.vlm_models import save_qwen3_vl_reranker

    return save_qwen3_vl_reranker(directory, size="tiny", seed=seed, max_pixels=max_pixels)
