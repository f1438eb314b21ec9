"""Build the labelled evaluation zoo into a folder (see modelseek/zoo/build.py for the format).

    .venv/bin/python scripts/build_eval_zoo.py ~/modelseek-zoo           # full: 48 models
    .venv/bin/python scripts/build_eval_zoo.py /tmp/zoo-ci --small       # CI: 7 models

Needs the Debian data packages that scripts/train_lite.py reads (the error names them).
"""

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path

from modelseek.errors import ModelseekError
from modelseek.zoo.build import build_zoo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="the zoo folder (a zoo there is replaced)")
    parser.add_argument("--small", action="store_true", help="the small CI zoo")
    parser.add_argument("--seed", type=int, default=0, help="training and query selection seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    try:
        manifest = build_zoo(args.out_dir, small=args.small, seed=args.seed)
    except ModelseekError as err:
        print(f"error: {err}", file=sys.stderr)  # noqa: T201 (CLI output)
        return 2

    kinds = Counter(info["kind"] for info in manifest["models"].values())
    queries = sum(info["n_queries"] for info in manifest["models"].values())
    print(  # noqa: T201 (CLI output)
        f"zoo {args.out_dir.expanduser().resolve()}: {len(manifest['models'])} models "
        f"({', '.join(f'{kind} {count}' for kind, count in sorted(kinds.items()))}), "
        f"{len(manifest['labels'])} labels, {queries} queries, built in "
        f"{manifest['build']['seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
