"""``python -m archiver.sandbox``: serve the sandbox in the foreground.

Prints one JSON line ``{"url": ...}`` to stdout once the server answers, then
serves until SIGTERM or SIGINT, and exits 0 after a clean shutdown.

``--fault-rates JSON`` starts it injecting random faults, as ``POST
/_sandbox/fault-rates`` would, e.g.
``--fault-rates '{"rates": {"503": 0.05, "429": 0.05, "drop": 0.02}, "seed": 7}'``
(without a ``seed`` there, ``--seed`` seeds the draws too). ``--image-form`` and
``--missing-slots`` choose the wire form served, as ``POST /_sandbox/options`` would.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import orjson

from archiver.sandbox import validate
from archiver.sandbox.server import SandboxServer
from archiver.sandbox.state import (
    IMAGE_FORMS,
    MISSING_SLOT_FORMS,
    RATE_KINDS,
    FaultRates,
    SandboxError,
    SandboxState,
    WireOptions,
)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m archiver.sandbox", description="Serve the ID Pass API sandbox."
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--token", required=True, help="the bearer token clients must send")
    parser.add_argument("--seed", type=int, default=None, help="make pass ids reproducible")
    parser.add_argument(
        "--fault-rates",
        metavar="JSON",
        default=None,
        help='random faults, e.g. \'{"rates": {"503": 0.05, "drop": 0.02}, "seed": 7}\' '
        f"(kinds: {' '.join(RATE_KINDS)}; see POST /_sandbox/fault-rates)",
    )
    parser.add_argument(
        "--image-form",
        choices=IMAGE_FORMS,
        default="map",
        help="how images travel: map {slot: Base64}, data_uri, image_list (default map)",
    )
    parser.add_argument(
        "--missing-slots",
        choices=MISSING_SLOT_FORMS,
        default="mixed",
        help="how a slot never captured is answered: mixed (per pass), absent, null",
    )
    args = parser.parse_args(argv)
    rates: FaultRates | None = None
    if args.fault_rates is not None:
        try:
            body = validate.read_object(args.fault_rates.encode())
            if "seed" not in body and args.seed is not None:
                body["seed"] = args.seed
            rates = validate.parse_fault_rates(body)
        except SandboxError as exc:
            parser.error(f"--fault-rates: {exc.message}")

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    state = SandboxState(seed=args.seed)
    state.set_fault_rates(rates)
    state.options = WireOptions(image_form=args.image_form, missing_slots=args.missing_slots)
    server = SandboxServer(args.token, host=args.host, port=args.port, state=state)
    try:
        server.start()
    except RuntimeError as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(orjson.dumps({"url": server.base_url}).decode() + "\n")
    sys.stdout.flush()
    try:
        while not stop.wait(0.5):
            if not server.running:
                print("sandbox: server stopped unexpectedly", file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
