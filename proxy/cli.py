"""`ih-proxy` / `python -m proxy`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from proxy.app import run
from proxy.config import ConfigError, load_config


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = load_config(argv)
    except ConfigError as exc:
        print(f"ih-proxy: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    run(config)
    return 0
