"""A Python child process on a socket: how the model and embedding processes are started.

A fresh interpreter calling `MODULE.main([FD, ...])`, not multiprocessing: fork
would copy the parent's torch state, and spawn re-runs the caller's main script.
(`-c`, not `-m`: runpy would run a second copy of a module its package imports.)
"""

from __future__ import annotations

import socket
import subprocess
import sys
from multiprocessing.connection import Connection

_ENTRY = "import sys; from {module} import main; main(sys.argv[1:])"


def start_child(module: str, *args: str) -> tuple[subprocess.Popen[bytes], Connection, socket.socket]:
    """Run `module.main([FD, *args])` in a new interpreter, FD being the child's end of a socketpair.

    Returns the process, the parent's Connection, and a duplicate of the parent's
    socket whose `shutdown()` gives both ends EOF (closing an fd under a blocked
    `recv()` would not wake it).
    """
    ours, theirs = socket.socketpair()
    with ours, theirs:
        process = subprocess.Popen(
            [sys.executable, "-c", _ENTRY.format(module=module), str(theirs.fileno()), *args],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
        )
        hangup = ours.dup()
        return process, Connection(ours.detach()), hangup
