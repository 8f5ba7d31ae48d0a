from dify_plugin import ModelProvider
from dify_plugin.errors.model import CredentialsValidateFailedError

from crossmodal.dify.models import run
from crossmodal.dify.validation import validate_model
from crossmodal.settings import Settings


class CrossmodalModelsProvider(ModelProvider):
    def validate_provider_credentials(self, credentials: dict) -> None:
        # The predefined models share these settings; the bundled demo model checks them without a download.
        settings = Settings.from_credentials({**credentials, "model": "demo-shapes"})
        run(validate_model, settings, bad_request=CredentialsValidateFailedError)
