"""The service layer: every adapter (Dify tools, endpoints, CLI) parses its input, calls one of these methods,
and formats what comes back. Nothing here knows Dify.

``Service`` is a thin facade: each method is one capability, which lives in its own module and takes the
shared plumbing (crossmodal/context.py) as its first argument.
"""

from __future__ import annotations

import functools

from crossmodal.alignment import aligner
from crossmodal.context import Context
from crossmodal.encoders import embedder
from crossmodal.ingest import documents as pdf_documents, writer
from crossmodal.ingest.items import IngestItem
from crossmodal.limits import narrowed_by
from crossmodal.inputs.images import pixel_budget
from crossmodal.inputs.sources import ImageInput
from crossmodal.rerank import documents, reranker
from crossmodal.search import searcher
from crossmodal.store import collections

__all__ = ["ImageInput", "IngestItem", "Service"]


def _capability(function):
    """A method that hands the service itself (its context) to a capability function, under the workspace's
    narrower limits (crossmodal/limits.py) and a fresh pixel budget for its images (crossmodal/inputs/images.py)."""

    @functools.wraps(function)
    def method(self, *args, **kwargs):
        with narrowed_by(self.settings.limits), pixel_budget():
            return function(self, *args, **kwargs)

    return method


class Service(Context):
    embed = _capability(embedder.embed)
    embed_documents = _capability(embedder.embed_documents)
    ingest = _capability(writer.ingest)
    chunk_document = _capability(pdf_documents.chunk_document)
    search = _capability(searcher.search)
    align = _capability(aligner.align)
    rerank = _capability(reranker.rerank)
    rerank_documents = _capability(documents.rerank_documents)
    list_collections = _capability(collections.list_collections)
    collection_info = _capability(collections.collection_info)
    delete_collection = _capability(collections.delete_collection)
