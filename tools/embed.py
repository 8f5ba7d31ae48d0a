from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from crossmodal.dify_adapter import ToolInputError, call, file_inputs, service_for, text_list


class EmbedTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        images = file_inputs(tool_parameters.get("images"))
        texts = text_list(tool_parameters.get("texts"))
        if not images and not texts:
            raise ToolInputError("images / texts: give at least one image file or one line of text")
        service = service_for(self.runtime.credentials)
        result = call(service.embed, images, texts, tool_parameters.get("model") or None)
        yield self.create_variable_message("model", result["model"])
        yield self.create_variable_message("dimension", result["dimension"])
        yield self.create_variable_message("items", result["items"])
        yield self.create_variable_message("rejected", result["rejected"])
        yield self.create_json_message(result)
