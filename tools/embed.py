from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from crossmodal.dify.adapter import ToolInputError, call, file_inputs, for_llm, service_for, text_list, variable_message
from crossmodal.lanes import lane_for_items


class EmbedTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        images = file_inputs(tool_parameters.get("images"))
        texts = text_list(tool_parameters.get("texts"))
        if not images and not texts:
            raise ToolInputError("images / texts: give at least one image file or one line of text")
        service = service_for(self.runtime.credentials, self.session)
        result = call(service.embed, images, texts, tool_parameters.get("model") or None,
                      tool_parameters.get("input_type") or "document", lane=lane_for_items(len(images) + len(texts)))
        items = variable_message(self, "items", result["items"])  # size-checked before anything is sent
        yield self.create_text_message(f"{len(result['items'])} vectors of {result['dimension']} dimensions "
                                       f"({result['model']}); {len(result['rejected'])} rejected")
        yield variable_message(self, "model", result["model"])
        yield variable_message(self, "dimension", result["dimension"])
        yield items
        yield variable_message(self, "rejected", result["rejected"])
        yield self.create_json_message(for_llm(result))
