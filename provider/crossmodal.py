from typing import Any

from dify_plugin import ToolProvider
from dify_plugin.errors.tool import ToolProviderCredentialValidationError

from crossmodal.dify.adapter import ToolInputError, call
from crossmodal.errors import CrossmodalError
from crossmodal.settings import Settings
from crossmodal.dify.validation import validate_settings


class CrossmodalProvider(ToolProvider):
    def _validate_credentials(self, credentials: dict[str, Any]) -> None:
        try:
            call(validate_settings, Settings.from_credentials(credentials))
        except (ToolInputError, RuntimeError, CrossmodalError) as exc:  # CrossmodalError: reading the settings
            raise ToolProviderCredentialValidationError(str(exc)) from None
