from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from crossmodal.dify.adapter import call, file_inputs, flag, number, service_for, summary_line, variable_message


class SearchTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        images = file_inputs(tool_parameters.get("image"))
        return_images = flag(tool_parameters.get("return_images"))
        service = service_for(self.runtime.credentials, self.session)
        result = call(
            service.search,
            text=tool_parameters.get("query") or None,
            image=images[0] if images else None,
            collection=tool_parameters.get("collection") or None,
            top_k=number(tool_parameters.get("top_k"), "top_k", 5),
            score_threshold=number(tool_parameters.get("score_threshold"), "score_threshold"),
            filter=tool_parameters.get("filter") or None,
            target=tool_parameters.get("target") or "image",
            model=tool_parameters.get("model") or None,
            text_weight=number(tool_parameters.get("text_weight"), "text_weight", 0.5),
            with_thumbnails=return_images,
            regions=flag(tool_parameters.get("regions")),
            rerank=tool_parameters.get("rerank") or None,
            rerank_k=number(tool_parameters.get("rerank_k"), "rerank_k", 20),
            mode=tool_parameters.get("mode") or None,
            fusion=tool_parameters.get("fusion") or None,
        )
        thumbnails = result.pop("thumbnails", {})
        yield self.create_text_message(summary_line(result["results"]))
        yield variable_message(self, "results", result["results"])
        yield variable_message(self, "model", result["model"])
        for rank, hit in enumerate(result["results"], 1):
            if hit["id"] in thumbnails:
                name = f"{rank:02d}-{hit['payload'].get('source', hit['id'])}".replace("/", "_")
                yield self.create_blob_message(
                    thumbnails[hit["id"]], meta={"mime_type": "image/jpeg", "filename": f"{name}.jpg"}
                )
        yield self.create_json_message(result)
