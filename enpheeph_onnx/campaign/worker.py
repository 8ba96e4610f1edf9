"""A local campaign worker process: ``python -m enpheeph_onnx.campaign.worker``, started by
``campaign --backend local`` (:mod:`enpheeph_onnx.campaign.backends`).

Its stdin and stdout carry :class:`multiprocessing.connection.Connection` messages from and
to the driver; fd 1 is pointed at stderr first, so that nothing a library prints can
corrupt them.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from multiprocessing.connection import Connection

    out = os.dup(1)
    os.dup2(2, 1)  # stray prints go to stderr, not into the protocol
    sys.stdout = sys.stderr
    from .backends import serve

    serve(Connection(os.dup(0), writable=False), Connection(out, readable=False))


if __name__ == "__main__":
    main()
