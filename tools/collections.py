from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from crossmodal.dify.adapter import ToolInputError, call, flag, service_for, variable_message
from crossmodal.lanes import LOOKUP


class CollectionsTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        action = tool_parameters.get("action") or "list"
        service = service_for(self.runtime.credentials, self.session)
        collection = tool_parameters.get("collection") or None
        if action == "list":
            result = call(service.list_collections, lane=LOOKUP)
        elif action == "info":
            result = call(service.collection_info, collection, lane=LOOKUP)
        elif action == "delete":
            result = call(service.delete_collection, collection, flag(tool_parameters.get("confirm")), lane=LOOKUP)
        else:
            raise ToolInputError(f"action: '{action}' is not one of list, info, delete")
        yield variable_message(self, "result", result)
        yield self.create_json_message(result)
