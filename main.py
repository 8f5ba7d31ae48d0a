import logging

from dify_plugin import DifyPluginEnv, Plugin
from dify_plugin.config.logger_format import plugin_logger_handler

# The core logs through the SDK's handler: stdout carries only protocol JSON.
logging.getLogger("crossmodal").addHandler(plugin_logger_handler)
logging.getLogger("crossmodal").setLevel(logging.INFO)

plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=600))

if __name__ == "__main__":
    plugin.run()
