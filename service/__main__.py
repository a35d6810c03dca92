"""``lstm-serve`` (also ``python -m service``): settings from flags and environment, then serve.

One worker (the default) serves in this process. Several: this process becomes their supervisor
(``supervisor.py``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .core.logs import configure_logging
from .core.settings import SettingsError, load_settings
from .process.runner import run_server
from .process.supervisor import Supervisor


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        print(f"lstm-serve: {exc}", file=sys.stderr)
        return 2
    # prometheus_client's own variable: an operator who sets it gets per-process metric files
    # there (and must empty it between runs); with several workers the supervisor sets one.
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    metrics_dir = Path(given) if given else None
    if metrics_dir is not None and not metrics_dir.is_dir():
        print(f"lstm-serve: PROMETHEUS_MULTIPROC_DIR={given!r} is not a directory", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers > 1:
        return Supervisor(settings, metrics_dir).run()
    return run_server(settings, metrics_dir=metrics_dir)


if __name__ == "__main__":
    sys.exit(main())
