"""The Align capability: decode, route the encoder, align, calibrate, draw the overlay."""

from __future__ import annotations

from crossmodal.alignment.align import AlignOptions, align as align_scores, split_phrases
from crossmodal.alignment.text_evidence import add_text_evidence
from crossmodal.context import Context
from crossmodal.encoders.workspace import require_local
from crossmodal.inputs.images import decode_image
from crossmodal.inputs.sources import ImageInput, read_input


def align(
    ctx: Context,
    image: ImageInput,
    text: str,
    model: str | None = None,
    mode: str = "auto",
    heatmap: bool = True,
    tile_size: int | None = None,
    overlap: float = 0.25,
    overlay: bool = True,
    ocr: str | bool | None = None,
) -> dict:
    """Similarity, calibrated match probability, per-phrase scores and boxes, heat map (+ PNG overlay). ``ocr``
    (auto, true, false): read the picture's text, and let a phrase it spells out point at its line
    (crossmodal/alignment/text_evidence.py); auto reads pictures in which text is detected."""
    from crossmodal.alignment.overlay import render_overlay
    from crossmodal.ingest import ocr as ocr_step

    options = AlignOptions(mode, bool(heatmap), int(tile_size) if tile_size else None, float(overlap))
    options.check()
    read = ocr_step.wanted(ocr_step.check_ocr(ocr))
    split_phrases(text)  # text errors before any image work
    decoded = decode_image(read_input(image), param="image")
    encoder, route = ctx.routed_encoder(asked=model, text=text)
    require_local(encoder, "Align")
    if getattr(encoder, "late_interaction", False):  # the model's own MaxSim says where (late.py)
        from crossmodal.alignment.late import late_align

        result = late_align(encoder, decoded.image, text, ctx.calibration(encoder))
    else:
        result = align_scores(encoder, decoded.image, text, options, ctx.calibration(encoder))
    result["route"] = route.as_dict()
    result["notes"] = decoded.notes + result["notes"]
    if read or (read is None and ocr_step.has_text_lines(decoded.image)):
        fields = ocr_step.fields_or_error(decoded.image, "image")
        result["ocr_text"] = fields.get("ocr_text")
        add_text_evidence(result, fields.get("ocr_lines") or [])
        if "error" in fields["ocr"]:
            result["notes"].append(fields["ocr"]["error"])
    if overlay:
        result["overlay_png"] = render_overlay(decoded.image, result)
    return result
