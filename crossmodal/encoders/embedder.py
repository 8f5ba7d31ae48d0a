"""The Embed capability: images and texts -> L2-normalised vectors in one space, with per-item rejections."""

from __future__ import annotations

from typing import Sequence

from crossmodal.context import Context, precision_warnings, truncation_warning, vector_list
from crossmodal.errors import CrossmodalError
from crossmodal.inputs.checks import check_text
from crossmodal.inputs.images import decode_image
from crossmodal.inputs.sources import ImageInput, read_input


def embed(ctx: Context, images: Sequence[ImageInput] = (), texts: Sequence[str] = (), model: str | None = None) -> dict:
    texts = [check_text(t, "texts") for t in texts]
    if not images and not texts:
        raise CrossmodalError("give at least one image or one text", param="images")
    encoder, route = ctx.routed_encoder(asked=model, text=" ".join(texts))
    items, rejected, warnings = [], [], precision_warnings(encoder)
    decoded = []
    for image in images:
        try:
            decoded.append((image.source, decode_image(read_input(image), param=f"images[{image.source}]")))
        except CrossmodalError as exc:
            rejected.append({"source": image.source, "reason": str(exc)})
    if decoded:
        vectors = encoder.encode_images([d.image for _, d in decoded])
        for (source, d), vec in zip(decoded, vectors):
            items.append({"kind": "image", "source": source, "width": d.width, "height": d.height,
                          "vector": vector_list(vec)})
            warnings += [f"{source}: {n}" for n in d.notes]
    if texts:
        encoded = encoder.encode_texts(texts)
        for i, (text, vec) in enumerate(zip(texts, encoded.vectors)):
            items.append({"kind": "text", "text": text, "vector": vector_list(vec)})
            if i in encoded.truncated:
                warnings.append(truncation_warning(text, encoder))
    return {"model": encoder.identity, "dimension": encoder.dim, "precision": encoder.precision, "items": items,
            "rejected": rejected, "warnings": warnings, "route": route.as_dict()}
