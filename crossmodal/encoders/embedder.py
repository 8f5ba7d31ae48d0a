"""The Embed capability: images and texts -> L2-normalised vectors in one space, with per-item rejections."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from crossmodal.context import Context, precision_warnings, truncation_warning, vector_list
from crossmodal.errors import CrossmodalError
from crossmodal.inputs.checks import check_text
from crossmodal.inputs.images import decode_image
from crossmodal.inputs.sources import ImageInput, decode_base64, read_input


def embed(ctx: Context, images: Sequence[ImageInput] = (), texts: Sequence[str] = (), model: str | None = None,
          input_type: str = "document") -> dict:
    """``input_type``: 'document' (what is stored and searched) or 'query' (what searches); models with prompts
    (VLM embedders, a workspace's) embed each its own way, dual encoders alike."""
    if input_type not in ("document", "query"):
        raise CrossmodalError(f"'{input_type}' is not document or query", param="input_type")
    texts = [check_text(t, "texts") for t in texts]
    if not images and not texts:
        raise CrossmodalError("give at least one image or one text", param="images")
    encoder, route = ctx.routed_encoder(asked=model, text=" ".join(texts))
    items, rejected, warnings = [], [], precision_warnings(encoder)
    inputs = []
    for image in images:  # each decoded, reduced to what the model reads and dropped before the next
        try:
            inputs.append(model_input(encoder, image, f"images[{image.source}]"))
        except CrossmodalError as exc:
            rejected.append({"source": image.source, "reason": str(exc)})
    if inputs:
        vectors = encode_model_inputs(encoder, [i.reduced for i in inputs], input_type)
        for entry, vec in zip(inputs, vectors):
            items.append({"kind": "image", "source": entry.source, "width": entry.width, "height": entry.height,
                          "vector": vector_list(vec)})
            warnings += [f"{entry.source}: {n}" for n in entry.notes]
    if texts:
        encoded = encoder.encode_texts(texts, input_type=input_type)
        for i, (text, vec) in enumerate(zip(texts, encoded.vectors)):
            items.append({"kind": "text", "text": text, "vector": vector_list(vec)})
            if i in encoded.truncated:
                warnings.append(truncation_warning(text, encoder))
    return {"model": encoder.identity, "dimension": encoder.dim, "precision": encoder.precision, "items": items,
            "rejected": rejected, "warnings": warnings, "route": route.as_dict()}


# A decoded image kept for an encoder without a fast preprocessor is shrunk to at most this many pixels
# (every model here reads far fewer: Qwen3-VL's default is 1.8 M): a call's images never sit in memory whole.
KEPT_PIXELS = 4_000_000


@dataclass
class ModelInput:
    source: str
    width: int
    height: int
    notes: list[str]
    reduced: object  # the model's resized uint8 input (fast preprocessor), or a picture of at most KEPT_PIXELS


def model_input(encoder, image: ImageInput, param: str) -> ModelInput:
    """One image read, decoded (a JPEG only as large as the model needs) and reduced to what the model reads;
    the full decode is dropped here."""
    fast = getattr(encoder, "fast_preprocessor", None)
    draft = (lambda w, h: fast.draft_request(w, h)) if fast is not None else None
    decoded = decode_image(read_input(image), param=param, min_size=draft)
    picture = decoded.image
    if fast is not None:
        reduced = fast.to_uint8(picture)
    else:
        if picture.width * picture.height > KEPT_PIXELS:
            picture = picture.copy()
            picture.thumbnail((int((KEPT_PIXELS * picture.width / picture.height) ** 0.5),
                               int((KEPT_PIXELS * picture.height / picture.width) ** 0.5)))
        reduced = picture
    return ModelInput(image.source, decoded.width, decoded.height, decoded.notes, reduced)


def encode_model_inputs(encoder, reduced: list, input_type: str):
    if getattr(encoder, "fast_preprocessor", None) is not None:
        return encoder.embed_pixels(encoder.normalise(reduced), batch_size=encoder.batch_size)
    return encoder.encode_images(reduced, input_type=input_type)


def embed_documents(ctx: Context, documents: Sequence[tuple[str, str]], model: str | None = None,
                    input_type: str = "document", first_index: int = 0) -> dict:
    """Texts and images (base64) of one call into one space, in the caller's order: what Dify's multimodal
    embedding models return. Unlike ``embed``, a bad document fails the call, naming its index, so that no
    vector ever lands at another document's place. ``first_index``: the request's index of ``documents[0]``
    (what an error names)."""
    if not documents:
        raise CrossmodalError("give at least one text or image", param="documents")
    images, texts, order = [], [], []
    for index, (kind, content) in enumerate(documents, start=first_index):
        param = f"documents[{index}]"
        if kind == "image":
            images.append(ImageInput.from_bytes(param, decode_base64(content, param)))
            order.append(("image", len(images) - 1))
        elif kind == "text":
            texts.append(check_text(content, param))
            order.append(("text", len(texts) - 1))
        else:
            raise CrossmodalError(f"content_type '{kind}' is not text or image", param=param)
    result = embed(ctx, images, texts, model, input_type)
    if result["rejected"]:
        first = result["rejected"][0]
        raise CrossmodalError(first["reason"].split(": ", 1)[-1], param=first["source"])
    image_items = [item for item in result["items"] if item["kind"] == "image"]
    text_items = [item for item in result["items"] if item["kind"] == "text"]
    vectors = [(image_items if kind == "image" else text_items)[k]["vector"] for kind, k in order]
    encoder = ctx.encoder(result["model"])
    tokens = sum(encoder.token_counts(texts)) if texts else 0
    tokens += len(images) * encoder.image_tokens
    return {"model": result["model"], "dimension": result["dimension"], "vectors": vectors, "tokens": tokens,
            "warnings": result["warnings"]}

