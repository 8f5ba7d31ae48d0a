from collections.abc import Sequence

from dify_plugin import RerankModel
from dify_plugin.entities import I18nObject
from dify_plugin.entities.model import AIModelEntity, FetchFrom, ModelFeature, ModelType
from dify_plugin.entities.model.rerank import MultiModalRerankResult, RerankDocument, RerankResult
from dify_plugin.entities.model.text_embedding import MultiModalContent
from dify_plugin.errors.model import CredentialsValidateFailedError, InvokeBadRequestError, InvokeError

from crossmodal.dify.models import (check_model, check_reply_size, rerank_limits, reranker_reads_images, run,
                                     service_for_model)
from crossmodal.lanes import lane_for_items


class CrossmodalRerankModel(RerankModel):
    """A text or image query against text or image documents, each scored as a 0-1 match probability: by the
    dual encoder's calibration, by BLIP ITM for image-text pairs when an ITM model is set, or, for a
    cross-encoder (text, or multimodal as Qwen3-VL-Reranker), by its relevance (crossmodal/rerank/documents.py)."""

    def _invoke(self, model: str, credentials: dict, query: str, docs: list[str],
                score_threshold: float | None = None, top_n: int | None = None,
                user: str | None = None) -> RerankResult:
        result = self._rerank(model, credentials, ("text", query), [("text", d) for d in docs], score_threshold,
                              top_n)
        return RerankResult(model=model, docs=result)

    def _invoke_multimodal(self, model: str, credentials: dict, query: MultiModalContent,
                           docs: Sequence[MultiModalContent], score_threshold: float | None = None,
                           top_n: int | None = None, user: str | None = None) -> MultiModalRerankResult:
        result = self._rerank(model, credentials, _pair(query), [_pair(d) for d in docs], score_threshold, top_n)
        return MultiModalRerankResult(model=model, docs=result)

    def validate_credentials(self, model: str, credentials: dict) -> None:
        check_model(model, credentials, CredentialsValidateFailedError, rerank=True)

    def get_customizable_model_schema(self, model: str, credentials: dict) -> AIModelEntity:
        # A text cross-encoder reads no images: without the vision feature, Dify sends it no image documents.
        service = service_for_model(model, credentials)
        vision = run(reranker_reads_images, service, model, bad_request=InvokeBadRequestError)
        return AIModelEntity(model=model, label=I18nObject(en_US=model), model_type=ModelType.RERANK,
                             fetch_from=FetchFrom.CUSTOMIZABLE_MODEL,
                             features=[ModelFeature.VISION] if vision else [], model_properties={})

    @property
    def _invoke_error_mapping(self) -> dict[type[InvokeError], list[type[Exception]]]:
        return {InvokeBadRequestError: [InvokeBadRequestError, ValueError]}

    def _rerank(self, model, credentials, query, docs, score_threshold, top_n) -> list[RerankDocument]:
        service = service_for_model(model, credentials)
        score_threshold, top_n = rerank_limits(score_threshold, top_n)
        result = run(service.rerank_documents, query, docs, score_threshold, top_n, model,
                     bad_request=InvokeBadRequestError, lane=lane_for_items(len(docs)))
        check_reply_size(result["docs"], "documents kept", InvokeBadRequestError)
        return [RerankDocument(index=d["index"], text=d["text"], score=d["score"]) for d in result["docs"]]


def _pair(content: MultiModalContent) -> tuple[str, str]:
    kind = content.content_type
    return str(getattr(kind, "value", kind)), content.content
