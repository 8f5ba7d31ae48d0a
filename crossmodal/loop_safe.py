"""Locks that the gevent loop and OS worker threads can share.

The SDK monkey-patches the plugin process with gevent. From then on every ``threading.Lock`` is a gevent
lock, bound to the hub of the thread that first used it, and its wake-ups only work among greenlets of that
hub. Shared with an OS worker thread it fails for good: a waiter on the loop is woken by a callback queued on
the worker's hub, which never runs again once the worker's task returns (the SDK's listener slept forever on
``concurrent.futures.thread._global_shutdown_lock`` while transformers, loading a checkpoint in a worker,
held it: no request was dispatched again, heartbeats went on). Locks are made everywhere (the standard
library, logging, tqdm, huggingface_hub, transformers, the SDK, us), so the fix is made once, for all of them:

- ``LoopSafeLock``: an OS lock at heart. A thread without a hub waits on it as any OS thread does. A greenlet
  in a thread that has a hub (the loop, or a worker whose code spawned greenlets) never blocks its thread: it
  waits on a gevent async watcher of its own hub, which a release from any thread wakes (``send()`` is
  thread-safe), with a bounded wait as a second line of defence.
- ``install``: the patched lock factories (``threading.Lock``, ``threading._allocate_lock`` that RLock,
  Condition, Semaphore and Barrier build on, ``_thread.allocate_lock``) make LoopSafeLocks from then on, and
  the gevent locks already made (module, class and instance attributes; each RLock's inner lock) are swapped.
  main.py calls it first, before any library is imported and before any thread starts.
"""

from __future__ import annotations

import collections
import gc
import sys
import time

# Longest wait for a wake-up before a waiting greenlet looks at the lock again on its own.
MAX_WAIT_SECONDS = 0.25


def unpatched(module: str, name: str):
    """``module.name`` as it was before gevent's patching (the same object when nothing is patched)."""
    try:
        from gevent import monkey
    except ImportError:
        import importlib

        return getattr(importlib.import_module(module), name)
    return monkey.get_original(module, name)


_allocate_os_lock = unpatched("_thread", "allocate_lock")


class LoopSafeLock:
    """A ``threading.Lock`` that OS threads and greenlets of any thread can share (see the module's text)."""

    __slots__ = ("_lock", "_guard", "_waiters", "__weakref__")

    def __init__(self):
        self._lock = _allocate_os_lock()
        self._guard = _allocate_os_lock()  # held only to touch _waiters, never across a switch
        self._waiters: collections.deque = collections.deque()  # async watchers of waiting greenlets

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(False):
            return True
        if not blocking:
            if timeout != -1:
                raise ValueError("can't specify a timeout for a non-blocking call")
            return False
        hub = _hub_of_this_thread()
        if hub is None or _getcurrent() is hub:  # nothing else to run here: wait as an OS thread does
            return self._lock.acquire(True, timeout)
        return self._acquire_in_hub(hub, None if timeout is None or timeout < 0 else time.monotonic() + timeout)

    def _acquire_in_hub(self, hub, deadline: float | None) -> bool:
        from gevent import Timeout

        while True:
            watcher = hub.loop.async_()
            with self._guard:
                self._waiters.append(watcher)
            woken = got = False
            try:
                got = self._lock.acquire(False)  # a release between the first try and the append
                if got:
                    return True
                wait = MAX_WAIT_SECONDS if deadline is None else min(MAX_WAIT_SECONDS, deadline - time.monotonic())
                if wait <= 0:
                    return False
                with Timeout(wait, False):
                    hub.wait(watcher)
                got = self._lock.acquire(False)
                if got:
                    return True
            finally:
                with self._guard:
                    try:
                        self._waiters.remove(watcher)
                    except ValueError:
                        woken = True  # a release chose this waiter
                    watcher.close()
                if woken and not got:
                    self._wake_one()  # the lock went to someone else or we gave up: pass the wake-up on

    def release(self) -> None:
        self._lock.release()  # RuntimeError when not held, as for any lock
        if self._waiters:
            self._wake_one()

    def _wake_one(self) -> None:
        with self._guard:  # sent under the guard: the waiter closes its watcher under it too
            if self._waiters:
                self._waiters.popleft().send()

    def locked(self) -> bool:
        return self._lock.locked()

    def _at_fork_reinit(self) -> None:
        self._lock = _allocate_os_lock()
        self._guard = _allocate_os_lock()
        self._waiters = collections.deque()

    __enter__ = acquire

    def __exit__(self, *exc) -> None:
        self.release()

    # the old names _thread's lock still answers to
    acquire_lock = acquire
    release_lock = release
    locked_lock = locked

    def __repr__(self) -> str:
        return f"<{'locked' if self.locked() else 'unlocked'} LoopSafeLock at {id(self):#x}>"


def _hub_of_this_thread():
    from gevent._hub_local import get_hub_if_exists

    return get_hub_if_exists()


def _getcurrent():
    from greenlet import getcurrent

    return getcurrent()


def gevent_lock_type():
    """The class of the locks gevent's patching makes (None when gevent is not installed)."""
    try:
        from gevent.thread import LockType
    except ImportError:
        return None
    return LockType


def install() -> int:
    """Make every lock from now on a LoopSafeLock and swap the gevent locks already made; returns how many
    were swapped. A no-op outside gevent's patching."""
    from gevent import monkey

    if not monkey.is_module_patched("threading"):
        return 0
    import _thread
    import threading

    threading.Lock = threading._allocate_lock = LoopSafeLock
    _thread.allocate_lock = LoopSafeLock
    return swap_lock_factories() + swap_existing_locks()


def swap_lock_factories() -> int:
    """Rebind ``Lock`` where a module or class took it before the fix (``from threading import Lock``;
    werkzeug's ``Map.lock_class = threading.Lock``): their later locks are LoopSafeLocks too."""
    import types

    lock_type = gevent_lock_type()
    swapped = 0
    for holder in gc.get_referrers(lock_type):
        owner = _attribute_owner(holder) if isinstance(holder, dict) else None
        if not isinstance(owner, (type, types.ModuleType)):
            continue
        for key in _keys_of(vars(owner), lock_type):
            _set_attribute(owner, key, LoopSafeLock)
            swapped += 1
    return swapped


def swap_existing_locks() -> int:
    """Replace the unheld gevent locks that attributes hold (module globals, class and instance attributes)
    and the inner lock of each unheld RLock. A lock also held elsewhere (a Condition's bound methods, a
    closure, a list) is left alone: swapping one reference of several would split the lock in two."""
    import threading

    lock_type = gevent_lock_type()
    found = [item for item in gc.get_objects() if type(item) in (threading._PyRLock, lock_type)]
    swapped = 0
    for item in found:
        if type(item) is threading._PyRLock:
            if type(item._block) is lock_type and item._count == 0 and not item._block.locked():
                item._block = LoopSafeLock()
                swapped += 1
        elif not item.locked():
            swapped += _swap_attribute_references(item, ignore=found)
    return swapped


def _swap_attribute_references(lock, ignore: list) -> int:
    import types

    # Loops, not comprehensions: a comprehension that named ``lock`` would hold it in a closure cell.
    owners = []
    for holder in gc.get_referrers(lock):
        if holder is ignore or isinstance(holder, types.FrameType) or _is_fork_hook(holder):
            continue
        owners.append(_attribute_owner(holder) if isinstance(holder, dict) else _object_with_attribute(holder, lock))
    if not owners or any(owner is None for owner in owners):
        return 0
    replacement = LoopSafeLock()
    for owner in owners:
        for key in _attribute_names(owner, lock):
            _set_attribute(owner, key, replacement)
    return 1


def _set_attribute(owner, key: str, value) -> None:
    import types

    if isinstance(owner, (type, types.ModuleType)):
        setattr(owner, key, value)  # a class's dict is written through setattr (type caches)
    elif key in getattr(owner, "__dict__", {}):
        vars(owner)[key] = value  # past any __setattr__ of the instance's class
    else:
        object.__setattr__(owner, key, value)  # a slot


def _keys_of(mapping, value) -> list:
    return [key for key, held in mapping.items() if held is value]


def _object_with_attribute(referrer, lock):
    """An instance that holds ``lock`` as an attribute (3.11+ keeps small instances' attributes inline, so
    the object itself is the referrer), else None."""
    if isinstance(referrer, type) or type(referrer).__module__.startswith(("gevent", "greenlet")):
        return None
    return referrer if _attribute_names(referrer, lock) else None


def _attribute_names(owner, value) -> list[str]:
    """The names of ``owner``'s attributes (its __dict__ and its slots) that hold ``value``."""
    attributes = getattr(owner, "__dict__", None)
    names = _keys_of(attributes, value) if isinstance(attributes, dict) else []
    for cls in type(owner).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if isinstance(slot, str) and getattr(owner, slot, None) is value:
                names.append(slot)
    return names


def _is_fork_hook(referrer) -> bool:
    """A bound method of the lock that only a registry holds: concurrent.futures hands its global lock's
    acquire, release and _at_fork_reinit to os.register_at_fork. They touch the old lock around a fork only,
    so they need not follow the swap. (A Condition's bound methods live in its attributes: not this.)"""
    if getattr(referrer, "__self__", None) is None or isinstance(referrer, type):
        return False
    return all(isinstance(r, list) for r in gc.get_referrers(referrer))


def _attribute_owner(mapping: dict):
    """The module, class or instance whose attributes ``mapping`` holds (None for any other dict, and for
    gevent's own modules and classes, which keep their locks)."""
    import types

    for owner in gc.get_referrers(mapping):
        if isinstance(owner, type):
            is_own = any(r is mapping for r in gc.get_referents(owner.__dict__))  # the proxy wraps the dict
        else:
            is_own = getattr(owner, "__dict__", None) is mapping
        if not is_own:
            continue
        if isinstance(owner, types.ModuleType):
            module = owner.__name__
        else:
            module = owner.__module__ if isinstance(owner, type) else type(owner).__module__
        return None if str(module).startswith(("gevent", "greenlet")) else owner
    return None
