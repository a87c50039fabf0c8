"""``python -m benchmarks [NAME ...] [options]`` — run lmkit's benchmarks (``make bench`` runs them all).

Names: train (step throughput vs Hugging Face GPT-2), time_to_loss, generation (KV cache),
attention (capture and explorer latency), data (corpus preparation), sweep (a notebook sweep, locally
and through Dask), memory (the memory plan against measured peaks; one process, DDP and FSDP). Each prints a table and
appends it, with machine info, to ``benchmarks/results/<name>.csv``. ``python -m benchmarks NAME -h``
lists a benchmark's options.
"""

from __future__ import annotations

import argparse
import importlib
import sys

NAMES = ("train", "time_to_loss", "generation", "attention", "data", "sweep", "memory")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    names = [a for a in argv if a in NAMES] or list(NAMES)
    rest = [a for a in argv if a not in NAMES]
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        parser = argparse.ArgumentParser(prog=f"python -m benchmarks {name}", description=module.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(parser)
        args, unknown = parser.parse_known_args(rest)
        if unknown and len(names) == 1:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        module.main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
