"""`python -m prco_mega.cluster CONFIG [key=value ...]`: print the per-GPU memory plan; exit 2 when
the config does not fit (the same as `prco-mega plan`)."""
from __future__ import annotations

import argparse
import sys

from prco_mega.cluster.plan import plan_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prco_mega.cluster", description=__doc__)
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key.path=value")
    args = parser.parse_intermixed_args(argv)
    try:
        plan = plan_config(args.config, args.overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(plan.table())
    return 0 if plan.fits else 2


if __name__ == "__main__":
    sys.exit(main())
