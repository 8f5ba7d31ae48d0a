from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from crossmodal.dify.adapter import ToolInputError, call, file_inputs, flag, number, service_for, variable_message
from crossmodal.lanes import BULK


class DocumentChunksTool(Tool):
    """A Knowledge Pipeline processor: a PDF (or an image) -> Dify's multimodal general chunks, each page's text
    with the page's picture and each figure with its page's text, the pictures uploaded through the session."""

    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        files = file_inputs(tool_parameters.get("file"))
        if len(files) != 1:
            raise ToolInputError("file: give one PDF or image file")
        service = service_for(self.runtime.credentials, self.session)
        chunks = call(service.chunk_document, files[0], number(tool_parameters.get("dpi"), "dpi"),
                      number(tool_parameters.get("max_pages"), "max_pages"),
                      flag(tool_parameters.get("figures", True)), lane=BULK)
        # Uploads are backwards invocations: they run here, in the session's greenlet, not in a worker thread.
        result = {"general_chunks": [{"content": chunk.content,
                                      "files": [uploaded_file(self.session.file.upload(p.name, p.data, p.mime_type))
                                                for p in chunk.pictures]} for chunk in chunks]}
        pictures = sum(len(chunk["files"]) for chunk in result["general_chunks"])
        yield self.create_text_message(f"{len(chunks)} chunks with {pictures} pictures from {files[0].source}")
        yield variable_message(self, "result", result)


def uploaded_file(response) -> dict:
    """An uploaded picture as Dify's multimodal chunk schema lists a file (id and filename as its indexer reads)."""
    return {"id": response.id, "related_id": response.id, "name": response.name, "filename": response.name,
            "size": response.size, "extension": response.extension, "mime_type": response.mime_type,
            "type": "image", "transfer_method": "tool_file", "url": response.preview_url or ""}
