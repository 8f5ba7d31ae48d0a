import time

from dify_plugin import TextEmbeddingModel
from dify_plugin.entities import I18nObject
from dify_plugin.entities.model import (AIModelEntity, EmbeddingInputType, FetchFrom, ModelFeature, ModelPropertyKey,
                                        ModelType)
from dify_plugin.entities.model.text_embedding import (EmbeddingUsage, MultiModalContent, MultiModalEmbeddingResult,
                                                       TextEmbeddingResult)
from dify_plugin.errors.model import CredentialsValidateFailedError, InvokeBadRequestError, InvokeError

from crossmodal.dify.models import check_model, check_reply_size, run, service_for_model, token_counts
from crossmodal.encoders.catalog import takes_options
from crossmodal.lanes import QUERY, lane_for_items


class CrossmodalTextEmbeddingModel(TextEmbeddingModel):
    def _invoke(self, model: str, credentials: dict, texts: list[str], user: str | None = None,
                input_type: EmbeddingInputType = EmbeddingInputType.DOCUMENT) -> TextEmbeddingResult:
        result = self._embed(model, credentials, [("text", text) for text in texts], input_type)
        return TextEmbeddingResult(model=model, embeddings=result["vectors"], usage=self._usage(result["tokens"]))

    def _invoke_multimodal(self, model: str, credentials: dict, documents: list[MultiModalContent],
                           user: str | None = None,
                           input_type: EmbeddingInputType = EmbeddingInputType.DOCUMENT) -> MultiModalEmbeddingResult:
        pairs = [(str(d.content_type.value if hasattr(d.content_type, "value") else d.content_type), d.content)
                 for d in documents]
        result = self._embed(model, credentials, pairs, input_type)
        return MultiModalEmbeddingResult(model=model, embeddings=result["vectors"],
                                         usage=self._usage(result["tokens"]))

    def get_num_tokens(self, model: str, credentials: dict, texts: list[str]) -> list[int]:
        service = service_for_model(model, credentials)
        return run(token_counts, service, texts, bad_request=InvokeBadRequestError)

    def validate_credentials(self, model: str, credentials: dict) -> None:
        check_model(model, credentials, CredentialsValidateFailedError)

    def get_customizable_model_schema(self, model: str, credentials: dict) -> AIModelEntity:
        # A VLM embedder reads long texts (8192 tokens) and costs more per chunk than a CLIP-family model (77).
        service = service_for_model(model, credentials)
        vlm = run(takes_options, model, service.settings.hub, bad_request=InvokeBadRequestError)
        properties = ({ModelPropertyKey.CONTEXT_SIZE: 8192, ModelPropertyKey.MAX_CHUNKS: 16} if vlm else
                      {ModelPropertyKey.CONTEXT_SIZE: 77, ModelPropertyKey.MAX_CHUNKS: 64})
        return AIModelEntity(model=model, label=I18nObject(en_US=model), model_type=ModelType.TEXT_EMBEDDING,
                             fetch_from=FetchFrom.CUSTOMIZABLE_MODEL, features=[ModelFeature.VISION],
                             model_properties=properties)

    @property
    def _invoke_error_mapping(self) -> dict[type[InvokeError], list[type[Exception]]]:
        return {InvokeBadRequestError: [InvokeBadRequestError, ValueError]}

    def _embed(self, model: str, credentials: dict, documents: list[tuple[str, str]], input_type) -> dict:
        service = service_for_model(model, credentials)
        # A knowledge base's query (and any short call) goes ahead of document indexing.
        lane = QUERY if input_type == EmbeddingInputType.QUERY else lane_for_items(len(documents))
        kind = "query" if input_type == EmbeddingInputType.QUERY else "document"
        result = run(service.embed_documents, documents, model, kind, bad_request=InvokeBadRequestError, lane=lane)
        check_reply_size(result["vectors"], "documents", InvokeBadRequestError)
        return result

    def _usage(self, tokens: int) -> EmbeddingUsage:
        return EmbeddingUsage(tokens=tokens, total_tokens=tokens, unit_price=0, price_unit=0, total_price=0,
                              currency="USD", latency=time.perf_counter() - self.started_at)
