import logging

from dify_plugin import DifyPluginEnv, Plugin
from dify_plugin.config.logger_format import plugin_logger_handler

from crossmodal.runtime import (LoopLogHandler, dump_stacks_on_signal, mark_loop_thread, preload_libraries,
                                use_os_locks_in_shared_libraries)
from crossmodal.encoders.warmup import warm_remembered

# The core logs through the SDK's handler (stdout carries only protocol JSON), written from the loop's thread
# only, so that a record from a worker thread never lands inside another protocol line.
logging.getLogger("crossmodal").addHandler(LoopLogHandler(plugin_logger_handler))
logging.getLogger("crossmodal").setLevel(logging.INFO)

# Import torch / transformers / huggingface_hub here, on the main thread, before serving:
# imported later inside a worker thread under gevent they fail (child watchers) and print to stdout.
preload_libraries()
# Logging is used from the loop and from worker threads at once: its locks must be OS locks, not the
# greenlet locks gevent's patching makes (they can hang for good across threads).
use_os_locks_in_shared_libraries()
# kill -USR1 writes every thread's and greenlet's stack to stderr: what a plugin that stopped answering waits for.
dump_stacks_on_signal()
# Calls into Dify (a workspace model) are made from worker threads through this loop (runtime.on_loop).
mark_loop_thread()
# Models that Dify's 5-second External Knowledge calls used before a restart load now, in the background.
warm_remembered()

plugin = Plugin(DifyPluginEnv(MAX_REQUEST_TIMEOUT=600))

if __name__ == "__main__":
    plugin.run()
