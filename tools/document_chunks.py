from collections.abc import Generator
from typing import Any

from dify_plugin import Tool
from dify_plugin.entities.tool import ToolInvokeMessage

from crossmodal.dify.adapter import ToolInputError, call, file_inputs, flag, number, service_for, variable_message
from crossmodal.dify.chunks import general_chunks
from crossmodal.errors import CrossmodalError
from crossmodal.lanes import BULK


class DocumentChunksTool(Tool):
    """A Knowledge Pipeline processor: a PDF (or an image) -> Dify's multimodal general chunks, each page's text
    with the page's picture and each figure with its page's text. The pictures are uploaded through the session
    and carried in each chunk's content as markdown images, the form Dify's indexer turns into attachments
    (crossmodal/dify/chunks.py)."""

    def _invoke(self, tool_parameters: dict[str, Any]) -> Generator[ToolInvokeMessage, None, None]:
        files = file_inputs(tool_parameters.get("file"))
        if len(files) != 1:
            raise ToolInputError("file: give one PDF or image file")
        service = service_for(self.runtime.credentials, self.session)
        chunks = call(service.chunk_document, files[0], number(tool_parameters.get("dpi"), "dpi"),
                      number(tool_parameters.get("max_pages"), "max_pages"),
                      flag(tool_parameters.get("figures", True)), tool_parameters.get("ocr"), lane=BULK)
        # Uploads are backwards invocations: they run here, in the session's greenlet, not in a worker thread.
        try:
            result = general_chunks(chunks, lambda p: self.session.file.upload(p.name, p.data, p.mime_type))
        except CrossmodalError as exc:
            raise ToolInputError(str(exc)) from None
        pictures = sum(len(chunk.pictures) for chunk in chunks)
        yield self.create_text_message(f"{len(chunks)} chunks with {pictures} pictures from {files[0].source}")
        yield variable_message(self, "result", result)
