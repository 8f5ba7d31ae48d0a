from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from crossmodal.dify.adapter import call, file_inputs, number, service_for, variable_message
from crossmodal.lanes import BULK, QUERY


class RerankTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        service = service_for(self.runtime.credentials, self.session)
        query_images = file_inputs(tool_parameters.get("query_image"))
        files = file_inputs(tool_parameters.get("files"))
        top_n = number(tool_parameters.get("top_n"), "top_n")
        result = call(
            service.rerank,
            query=tool_parameters.get("query") or None,
            candidates=tool_parameters.get("candidates"),
            files=files,
            query_image=query_images[0] if query_images else None,
            top_n=int(top_n) if top_n else None,
            method=tool_parameters.get("method") or "auto",
            model=tool_parameters.get("model") or None,
            collection=tool_parameters.get("collection") or None,
            weight=number(tool_parameters.get("weight"), "weight", 0.5),
            instruction=tool_parameters.get("instruction") or None,
            lane=BULK if files else QUERY,  # image files are read and encoded; texts and ids are a query's work
        )
        lines = [f"{r['rank']}. {r.get('text') or r['payload'].get('source') or r['id']} ({r['score']:.3f}, "
                 f"was #{r['first_stage_rank']})" for r in result["results"][:5]]
        yield self.create_text_message("\n".join(lines) or "no candidates to rerank")
        for key in ("results", "method", "model", "rejected"):
            yield variable_message(self, key, result[key])
        yield self.create_json_message(result)
