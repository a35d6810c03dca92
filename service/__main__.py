"""``lstm-serve`` (also ``python -m service``): settings from flags and environment, then serve.

One worker (the default) serves in this process. Several: this process becomes their supervisor
(``supervisor.py``). Either way the checks that can fail without serving come first, each one line
on stderr: the settings, listening beyond loopback without authentication (``check_exposure``),
and the token files.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from .core.auth import MetricsToken, TokenFileError, TokenRegistry
from .core.logs import configure_logging
from .core.settings import SettingsError, check_exposure, load_settings
from .process.runner import run_server
from .process.supervisor import Supervisor


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
        exposed = check_exposure(settings)
    except SettingsError as exc:
        print(f"lstm-serve: {exc}", file=sys.stderr)
        return 2
    # Read here once, so that a bad file stops even a supervisor with one line; each worker
    # reads the files again as it starts.
    for flag, path, read in (
        ("--auth-tokens", settings.auth_tokens, TokenRegistry),
        ("--metrics-token-file", settings.metrics_token_file, MetricsToken),
    ):
        if path is not None:
            try:
                read(path)
            except TokenFileError as exc:
                print(f"lstm-serve: {flag} {exc}", file=sys.stderr)
                return 2
    # prometheus_client's own variable: an operator who sets it gets per-process metric files
    # there (and must empty it between runs); with several workers the supervisor sets one.
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    metrics_dir = Path(given) if given else None
    if metrics_dir is not None and not metrics_dir.is_dir():
        print(f"lstm-serve: PROMETHEUS_MULTIPROC_DIR={given!r} is not a directory", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    if exposed is not None:
        logging.getLogger("service").warning("%s", exposed)
    if settings.workers > 1:
        return Supervisor(settings, metrics_dir).run()
    return run_server(settings, metrics_dir=metrics_dir)


if __name__ == "__main__":
    sys.exit(main())
