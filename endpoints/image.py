from collections.abc import Mapping

from dify_plugin import Endpoint
from werkzeug import Request, Response

from crossmodal.api.http import respond


class ImageEndpoint(Endpoint):
    def _invoke(self, r: Request, values: Mapping, settings: Mapping) -> Response:
        return respond("image", r, settings)
