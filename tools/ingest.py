from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from crossmodal.dify.adapter import (ToolInputError, call, file_inputs, flag, json_object, number, service_for,
                                     tag_list, text_list, variable_message)
from crossmodal.lanes import BULK
from crossmodal.service import IngestItem


class IngestTool(Tool):
    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        files = file_inputs(tool_parameters.get("files"))
        texts = text_list(tool_parameters.get("texts"))
        if not files and not texts:
            raise ToolInputError("files / texts: give at least one image file or one line of text to ingest")
        captions = text_list(tool_parameters.get("captions"))
        if captions and len(captions) != len(files):
            raise ToolInputError(f"captions: give one line per file ({len(files)} files, {len(captions)} lines), "
                                 "or leave it empty")
        tags = tag_list(tool_parameters.get("tags"))
        metadata = json_object(tool_parameters.get("metadata"), "metadata")
        items = [IngestItem(image=f, caption=captions[i] if captions else None, tags=tags, metadata=metadata)
                 for i, f in enumerate(files)]
        items += [IngestItem(text=t, tags=tags, metadata=metadata) for t in texts]
        service = service_for(self.runtime.credentials, self.session)
        report = call(service.ingest, items, tool_parameters.get("collection") or None,
                      tool_parameters.get("model") or None, regions=flag(tool_parameters.get("regions")),
                      storage=tool_parameters.get("storage") or None,
                      embed_captions=flag(tool_parameters.get("embed_captions")),
                      dpi=number(tool_parameters.get("dpi"), "dpi"), max_pages=number(tool_parameters.get("max_pages"),
                                                                                      "max_pages"),
                      figures=flag(tool_parameters.get("figures")), ocr=tool_parameters.get("ocr"), lane=BULK)
        yield self.create_text_message(
            f"{report['added']} added, {report['duplicates']} duplicates, {len(report['rejected'])} rejected; "
            f"'{report['collection']}' now holds {report['count']} points"
        )
        for key in ("added", "duplicates", "rejected", "items", "collection", "count"):
            yield variable_message(self, key, report[key])
        yield self.create_json_message(report)
