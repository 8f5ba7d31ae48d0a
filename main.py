import logging

from dify_plugin import DifyPluginEnv, Plugin  # patches the process with gevent

# First, before any other import or thread: every lock of the process becomes one that the gevent loop and OS
# worker threads can share (a gevent lock shared with a worker thread can put the SDK's listener to sleep for
# good while heartbeats go on; see crossmodal/loop_safe.py).
from crossmodal.runtime import install_loop_safe_locks

install_loop_safe_locks()

from dify_plugin.config.logger_format import plugin_logger_handler  # noqa: E402

from crossmodal.dify.server import ending_every_session  # noqa: E402
from crossmodal.runtime import LoopLogHandler, dump_stacks_on_signal, mark_loop_thread, prepare_plugin_imports  # noqa: E402
from crossmodal.workers.supervisor import engine  # noqa: E402

# The core logs through the SDK's handler (stdout carries only protocol JSON), written from the loop's thread
# only, so that a record from another thread never lands inside another protocol line.
logging.getLogger("crossmodal").addHandler(LoopLogHandler(plugin_logger_handler))
logging.getLogger("crossmodal").setLevel(logging.INFO)

prepare_plugin_imports()
# kill -USR1 writes every thread's and greenlet's stack to stderr: what a plugin that stopped answering waits for.
dump_stacks_on_signal()
mark_loop_thread()
# The worker process: every call's work runs there (crossmodal/workers/). It starts now, loading the model
# libraries and warming the models that Dify's 5-second External Knowledge calls used before a restart, while
# this process already answers heartbeats.
engine()

plugin = ending_every_session(Plugin)(DifyPluginEnv(MAX_REQUEST_TIMEOUT=600))

if __name__ == "__main__":
    plugin.run()
