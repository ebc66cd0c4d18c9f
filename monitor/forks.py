"""What a forked child (``os.fork``: a DataLoader worker, a forking multiprocessing start) does with the objects that
own a background thread in its parent: it disowns them.

A forked child inherits the parent's objects but not its threads. An object that owns a thread (the record writer,
a webhook channel) registers itself with :func:`disown_in_forked_child`; in the child, its ``disown()`` runs right
after the fork, so the child's copy neither touches the parent's queue, spool or pending alerts nor waits at exit
for a thread that does not exist there.

Example:
    >>> class Owner:
    ...     def disown(self): self.disowned = True
    >>> owner = Owner()
    >>> disown_in_forked_child(owner)
    >>> _after_fork_in_child(); owner.disowned
    True
"""
from __future__ import annotations

import os
import weakref
from typing import Any

__all__ = ["disown_in_forked_child"]

# the one registry the fork hook reads: a process-wide fact (which objects own threads here), held weakly
_OWNERS: "weakref.WeakSet[Any]" = weakref.WeakSet()


def disown_in_forked_child(owner: Any) -> None:
    """Call ``owner.disown()`` in every child forked from this process while ``owner`` is alive."""
    _OWNERS.add(owner)


def _after_fork_in_child() -> None:
    for owner in list(_OWNERS):
        try:
            owner.disown()
        except Exception:  # noqa: BLE001 - a child must start whatever one owner does
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
