"""The bearer token both clients present: ``--token``, or ``LSTM_TOKEN`` from the environment."""

from __future__ import annotations

import argparse
import os

__all__ = ["add_token_argument", "auth_headers"]


def add_token_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--token",
        default=os.environ.get("LSTM_TOKEN") or None,
        help="bearer token for a service with authentication (default: $LSTM_TOKEN); "
        "prefer the variable, as a command line is visible to other users",
    )


def auth_headers(token: str | None) -> dict[str, str]:
    """Headers that every request of the client's session carries."""
    return {"Authorization": f"Bearer {token}"} if token else {}
