from dify_plugin import ModelProvider
from dify_plugin.errors.model import CredentialsValidateFailedError

from crossmodal.dify.models import check_model


class CrossmodalModelsProvider(ModelProvider):
    def validate_provider_credentials(self, credentials: dict) -> None:
        # The predefined models share these settings; the bundled demo model checks them without a download.
        check_model("demo-shapes", credentials, CredentialsValidateFailedError)
