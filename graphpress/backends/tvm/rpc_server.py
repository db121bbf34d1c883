"""TVM's RPC server in this very process:
``python rpc_server.py --tracker HOST:PORT --key KEY [--host H] [--port P]``.

``python -m tvm.exec.rpc_server`` starts the same server in a child Python (``sys.executable``),
which qemu-user cannot start without binfmt_misc. This runs TVM's server state
(``tvm.rpc.server.PopenRPCServerState``) in this process instead; each session still runs in a
forked child, as with TVM's own launcher. It needs only TVM (with cloudpickle and psutil) and
no graphpress, so it runs under ``qemu-aarch64`` with the aarch64 wheel
(:func:`graphpress.backends.tvm.qemu.start_rpc_server`). On a real board, TVM's own
``python -m tvm.exec.rpc_server`` is the one to run.
"""

import argparse
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracker", required=True, help="HOST:PORT of the RPC tracker to register with")
    parser.add_argument("--key", required=True, help="the device key clients ask the tracker for")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9090, help="first port to try (default 9090; the next 100 are tried too)")
    args = parser.parse_args(argv)
    from tvm.rpc.server import PopenRPCServerState

    host, _, port = args.tracker.rpartition(":")
    state = PopenRPCServerState(args.host, args.port, args.port + 100, tracker_addr=(host, int(port)), key=args.key, silent=True)
    print(f"rpc server on {args.host}:{state.port}, key {args.key}, tracker {args.tracker}", flush=True)
    state.thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
