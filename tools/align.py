from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from crossmodal.dify.adapter import (ToolInputError, call, file_inputs, flag, for_llm, number, service_for,
                                     url_input, variable_message)
from crossmodal.lanes import BULK

CONTRACT = ("similarity_score", "match_probability", "phrases", "attention_map", "model", "mode", "ocr_text")


class AlignTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        images = file_inputs(tool_parameters.get("image"))
        service = service_for(self.runtime.credentials, self.session)
        url = (tool_parameters.get("image_url") or "").strip()
        if url and not images:
            images = [url_input(url, service.settings)]
        if not images:
            raise ToolInputError("image: give an image file or an image_url")
        tile_size = number(tool_parameters.get("tile_size"), "tile_size")
        result = call(  # heat maps and tiles: bulk work, never ahead of searches
            service.align,
            images[0],
            tool_parameters.get("text") or "",
            model=tool_parameters.get("model") or None,
            mode=tool_parameters.get("mode") or "auto",
            heatmap=flag(tool_parameters.get("heatmap", True)),
            tile_size=int(tile_size) if tile_size else None,
            overlap=number(tool_parameters.get("overlap"), "overlap", 0.25),
            ocr=tool_parameters.get("ocr"),
            lane=BULK,
        )
        overlay = result.pop("overlay_png", None)
        yield self.create_text_message(_summary(result))
        for key in CONTRACT:
            if result.get(key) is not None:
                yield variable_message(self, key, result[key])
        if overlay:
            yield self.create_blob_message(overlay, meta={"mime_type": "image/png", "filename": "alignment.png"})
        yield self.create_json_message(for_llm(result))


def _summary(result: dict) -> str:
    head = f"similarity {result['similarity_score']:.3f}"
    if result.get("match_probability") is not None:
        head += f", match probability {result['match_probability']:.2f}"
    phrases = "; ".join(f"{p['text']}: {p['similarity_score']:.3f}" for p in result["phrases"])
    return f"{head} ({result['mode']}). {phrases}"
