"""``lstm-token``: make a bearer token and the tokens file entry that grants it; check a tokens
file before the service reads it.

::

    lstm-token new --name plant-a-writer --tenant plant-a --scopes write,read [--json]
    lstm-token new --name plant-a-writer --tenant plant-a --scopes write,read --add tokens.json
    lstm-token check tokens.json

``new`` draws 256 random bits (``secrets``), prints the token once (nothing keeps it: give it to
the client now) and the entry to add to the file's ``tokens`` list, which holds only the token's
SHA-256. The entry is checked by the service's own rules before it is printed. With ``--add FILE``
the entry is also written into FILE (created if missing, readable by all: it holds only hashes,
and a container's user must read it; an existing file keeps its mode): the whole new file is
checked as the service would read it, then replaces the old one in one rename, so a service
watching it never reads half a file.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ..core.auth import SCOPES, TokenFileError, hash_token, parse_entry, parse_tokens
from ..core.ids import DEFAULT_TENANT

__all__ = ["TOKEN_PREFIX", "main", "new_token"]

# A recognisable prefix lets secret scanners and people tell an lstm-serve token at a glance.
TOKEN_PREFIX = "lstm_"
TOKEN_BYTES = 32  # 256 bits


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstm-token", description="Bearer tokens for lstm-serve's --auth-tokens file."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    new = commands.add_parser("new", help="make a token and the entry that grants it")
    new.add_argument("--name", required=True, help="the entry's name, shown in logs and errors")
    new.add_argument(
        "--tenant",
        default=DEFAULT_TENANT,
        help=f"the tenant whose streams the token reaches (default: {DEFAULT_TENANT})",
    )
    new.add_argument(
        "--scopes", required=True, help=f"comma-separated, of {', '.join(SCOPES)}: e.g. write,read"
    )
    new.add_argument(
        "--json", action="store_true", help='print one JSON object {"token", "entry"} instead'
    )
    new.add_argument(
        "--add",
        type=Path,
        metavar="FILE",
        help="also add the entry to this tokens file (created if missing)",
    )
    check = commands.add_parser("check", help="check a tokens file as the service would")
    check.add_argument("file", type=Path)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check":
        try:
            tokens = parse_tokens(args.file.read_bytes())
        except OSError as exc:
            print(f"lstm-token: {args.file}: cannot be read ({exc.strerror})", file=sys.stderr)
            return 1
        except TokenFileError as exc:
            print(f"lstm-token: {args.file}: {exc}", file=sys.stderr)
            return 1
        print(f"{args.file}: valid, {tokens.summary()}")
        return 0
    token = new_token()
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    entry = {
        "name": args.name,
        "sha256": hash_token(token),
        "tenant": args.tenant,
        "scopes": scopes,
    }
    try:
        parse_entry(entry, "entry")
    except TokenFileError as exc:
        print(f"lstm-token: {exc}", file=sys.stderr)
        return 2
    if args.add is not None:
        try:
            _add_entry(args.add, entry)
        except OSError as exc:
            print(f"lstm-token: {args.add}: cannot be written ({exc.strerror})", file=sys.stderr)
            return 1
        except (TokenFileError, ValueError) as exc:
            print(f"lstm-token: {args.add}: {exc}; nothing was written", file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps({"token": token, "entry": entry}))
        return 0
    print(f"token: {token}")
    print(f"entry: {json.dumps(entry)}")
    where = (
        f"The entry is now in {args.add}"
        if args.add is not None
        else 'Add the entry to the "tokens" list of the tokens file'
    )
    print(
        f"Give the token to its client now: only its SHA-256 is kept. {where}; the service "
        "reads it within 2 s (or on SIGHUP).",
        file=sys.stderr,
    )
    return 0


def _add_entry(path: Path, entry: dict[str, object]) -> None:
    """Add ``entry`` to the tokens file at ``path`` (a new file if there is none), checked whole
    by the service's rules first; the file is replaced atomically."""
    mode = 0o644
    if path.exists():
        mode = path.stat().st_mode & 0o777
        document = json.loads(path.read_bytes())
        if not isinstance(document, dict) or not isinstance(document.get("tokens"), list):
            raise ValueError('it is not a tokens file ({"tokens": [...]})')
        if any(isinstance(e, dict) and e.get("name") == entry["name"] for e in document["tokens"]):
            raise ValueError(f"it already has an entry named {entry['name']!r}")
    else:
        document = {"tokens": []}
    document["tokens"].append(entry)
    text = json.dumps(document, indent=2) + "\n"
    parse_tokens(text.encode())
    handle, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(scratch, mode)
        os.replace(scratch, path)
    except BaseException:
        Path(scratch).unlink(missing_ok=True)
        raise


if __name__ == "__main__":
    sys.exit(main())
