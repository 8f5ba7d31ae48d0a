"""The Dify workspace's embedding models, reached from a tool node by the SDK's reverse invocation
(crossmodal/encoders/workspace.py is the encoder over them)."""

from __future__ import annotations

from crossmodal.runtime import on_loop


class SessionModels:
    """``WorkspaceModels`` over a tool session: each call is one backwards invocation, made on the gevent loop
    (the session's streams live there) while the worker thread that asked waits."""

    def __init__(self, session):
        self.session = session

    def embed(self, provider: str, model: str, documents: list[dict], input_type: str) -> list[list[float]]:
        return on_loop(self._invoke, provider, model, documents, input_type)

    def __reduce__(self):
        # The session lives in this process; the worker process gets a handle and calls back through it
        # (crossmodal/workers/engine.py, RemoteTarget), for as long as the call that carries it.
        from crossmodal.workers.engine import RemoteTarget
        from crossmodal.workers.supervisor import engine

        return RemoteTarget, (engine().lend(self),)

    def _invoke(self, provider: str, model: str, documents: list[dict], input_type: str) -> list[list[float]]:
        from dify_plugin.entities.model import EmbeddingInputType
        from dify_plugin.entities.model.text_embedding import MultiModalContent, MultiModalEmbeddingModelConfig

        # The daemon replaces tenant_id with the session's own tenant before Dify sees the request.
        config = MultiModalEmbeddingModelConfig(provider=provider, model=model, tenant_id="")
        contents = [MultiModalContent(**d) for d in documents]
        kind = EmbeddingInputType.QUERY if input_type == "query" else EmbeddingInputType.DOCUMENT
        result = self.session.model.text_embedding.invoke_multimodal(config, contents, kind)
        return result.embeddings
