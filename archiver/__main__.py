"""``python -m archiver`` and the ``idpass-archiver`` script."""

from __future__ import annotations

import gc


def main() -> int:
    """Start the CLI with the cyclic garbage collector paused.

    Start-up creates some 70 000 long-lived objects (modules, classes, botocore's and
    pydantic's models), and the collector walking them again and again while they were
    created cost 0.15 s of a 0.8 s start (`run` with nothing due). The CLI turns it back
    on (:func:`archiver.cli.settle_gc`) before any command does its work: `run` once it
    is set up, every other command at once.
    """
    gc.disable()
    try:
        from archiver.cli import main as cli_main
    except BaseException:
        gc.enable()
        raise
    return cli_main()


if __name__ == "__main__":
    raise SystemExit(main())
