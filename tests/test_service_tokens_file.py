"""The tokens file, its registry and reload, the tenants' reading buckets, the metrics token and
``lstm-token``, without a server: each rule of the file is named when broken, a reload takes a
good file and keeps the old set over a bad one, and what ``lstm-token new`` prints is an entry the
service accepts."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from service_harness import ROOT

from service.core.auth import (
    MetricsToken,
    TokenBucket,
    TokenFileError,
    TokenRegistry,
    hash_token,
    parse_tokens,
)
from service.process import tokens_cli

A_TOKEN, B_TOKEN = "token-a-" + "x" * 30, "token-b-" + "y" * 30


def entry(name: str, token: str, tenant: str = "plant-a", scopes: Any = None) -> dict[str, Any]:
    return {
        "name": name,
        "sha256": hash_token(token),
        "tenant": tenant,
        "scopes": ["read", "write"] if scopes is None else scopes,
    }


def write(path: Path, doc: Any) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_valid_file_gives_principals_by_hash_and_limits_by_tenant() -> None:
    doc = {
        "tokens": [entry("a", A_TOKEN), entry("b", B_TOKEN, "default", ["admin"])],
        "tenants": {"plant-a": {"max_streams": 10, "readings_per_s": 2.5}, "idle": {}},
    }
    tokens = parse_tokens(json.dumps(doc).encode())
    a = tokens.principals[hash_token(A_TOKEN)]
    assert (a.name, a.tenant, a.scopes) == ("a", "plant-a", frozenset({"read", "write"}))
    assert hash_token(A_TOKEN) not in repr(a)  # the hash stays out of reprs (and so of logs)
    assert tokens.tenants["plant-a"].max_streams == 10
    assert tokens.tenants["plant-a"].readings_per_s == 2.5
    assert tokens.tenants["idle"].max_streams is None
    assert tokens.summary() == "2 token(s) of 3 tenant(s)"
    # Upper-case hex is the same hash.
    upper = {"tokens": [{**entry("a", A_TOKEN), "sha256": hash_token(A_TOKEN).upper()}]}
    assert hash_token(A_TOKEN) in parse_tokens(json.dumps(upper).encode()).principals


GOOD = entry("a", A_TOKEN)


@pytest.mark.parametrize(
    ("doc", "fault"),
    [
        ("{not json", "is not valid JSON (Expecting property name"),
        ([], "the file must be an object with tokens, tenants"),
        ({}, "has no 'tokens' list"),
        ({"tokens": {}}, "'tokens' must be a list"),
        ({"tokens": [], "users": []}, "the file has unknown field(s) 'users'"),
        ({"tokens": ["abc"]}, "tokens[0] must be an object with name, sha256, tenant, scopes"),
        ({"tokens": [GOOD, {**GOOD, "name": "b", "sha256": None}]}, "tokens[1] (b): 'sha256'"),
        ({"tokens": [{k: v for k, v in GOOD.items() if k != "sha256"}]}, "tokens[0] has no 'sha"),
        ({"tokens": [{**GOOD, "sha256": GOOD["sha256"][:63]}]}, "tokens[0] (a): 'sha256' must be"),
        ({"tokens": [{**GOOD, "token": A_TOKEN}]}, "holds only each token's sha256"),
        ({"tokens": [{**GOOD, "name": "a b"}]}, "tokens[0].name must be 1 to 128"),
        ({"tokens": [{**GOOD, "tenant": "plant a"}]}, "tokens[0] (a): 'tenant' must be"),
        ({"tokens": [{**GOOD, "scopes": ["write", "delete"]}]}, "tokens[0] (a): 'scopes' must"),
        ({"tokens": [{**GOOD, "scopes": []}]}, "tokens[0] (a): 'scopes' must be a non-empty"),
        ({"tokens": [{**GOOD, "scopes": "read"}]}, "tokens[0] (a): 'scopes' must be"),
        ({"tokens": [{**GOOD, "scopes": ["read", "read"]}]}, "names a scope twice"),
        (
            {"tokens": [GOOD, entry("a", B_TOKEN)]},
            "tokens[1] (a): tokens[0] has the same name",
        ),
        (
            {"tokens": [GOOD, {**GOOD, "name": "b"}]},
            "tokens[1] (b): tokens[0] has the same sha256",
        ),
        ({"tokens": [], "tenants": []}, "'tenants' must be an object"),
        ({"tokens": [], "tenants": {"a b": {}}}, "tenants: 'a b' is not a tenant name"),
        ({"tokens": [], "tenants": {"t": {"max_streams": 0}}}, "tenants.t.max_streams must be"),
        ({"tokens": [], "tenants": {"t": {"max_streams": 2.5}}}, "tenants.t.max_streams must"),
        ({"tokens": [], "tenants": {"t": {"readings_per_s": 0}}}, "tenants.t.readings_per_s"),
        ({"tokens": [], "tenants": {"t": {"readings_per_s": "5"}}}, "tenants.t.readings_per_s"),
        ({"tokens": [], "tenants": {"t": {"streams": 5}}}, "tenants.t has unknown field(s)"),
    ],
)
def test_each_fault_of_a_tokens_file_is_named(doc: Any, fault: str) -> None:
    raw = (doc if isinstance(doc, str) else json.dumps(doc)).encode()
    with pytest.raises(TokenFileError) as caught:
        parse_tokens(raw)
    message = str(caught.value)
    assert fault in message
    assert hash_token(A_TOKEN)[:16] not in message and A_TOKEN not in message


def test_the_registry_finds_a_token_by_its_hash_and_knows_each_tenants_limit(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "tokens.json",
        {"tokens": [GOOD], "tenants": {"plant-a": {"max_streams": 3}}},
    )
    registry = TokenRegistry(path)
    principal = registry.authenticate(A_TOKEN)
    assert principal is not None and principal.name == "a" and len(registry) == 1
    assert registry.lookup(hash_token(A_TOKEN)) is principal
    assert registry.authenticate(B_TOKEN) is None
    assert registry.authenticate(A_TOKEN + " ") is None
    assert registry.limit("plant-a") == 3 and registry.limit("other") is None
    assert registry.allows(principal, "read") and not registry.allows(principal, "admin")
    assert registry.readings_wait_s("plant-a", 10**6) == 0.0  # no readings_per_s: no quota


def test_a_bad_file_at_start_up_raises_one_message_naming_file_and_fault(tmp_path: Path) -> None:
    missing = tmp_path / "absent.json"
    with pytest.raises(TokenFileError, match=r"absent\.json: cannot be read \(No such file"):
        TokenRegistry(missing)
    bad = write(tmp_path / "bad.json", {"tokens": [{**GOOD, "scopes": ["root"]}]})
    with pytest.raises(TokenFileError) as caught:
        TokenRegistry(bad)
    assert str(caught.value).startswith(f"{bad}: tokens[0] (a): 'scopes' must be")
    assert "\n" not in str(caught.value)


def test_reload_takes_a_changed_file_and_keeps_the_old_set_over_a_bad_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "service.core.auth")
    path = write(tmp_path / "tokens.json", {"tokens": [GOOD]})
    registry = TokenRegistry(path)
    old = registry.authenticate(A_TOKEN)
    assert old is not None
    assert registry.reload() is False and registry.generation == 0  # nothing changed

    write(path, {"tokens": [entry("b", B_TOKEN, scopes=["read"])]})
    assert registry.reload() is True and registry.generation == 1
    assert registry.authenticate(A_TOKEN) is None and registry.authenticate(B_TOKEN) is not None
    assert not registry.allows(old, "read")  # A was revoked
    assert "reloaded on a change: 1 token(s) of 1 tenant(s)" in caplog.text

    caplog.clear()
    write(path, '{"tokens": [')  # half written, or broken
    for _ in range(3):
        assert registry.reload() is False
    assert registry.authenticate(B_TOKEN) is not None  # the previous set stays
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "a fault is logged once, not at every check"
    assert "not reloaded: is not valid JSON" in warnings[0].getMessage()
    assert "keeping what was loaded before" in warnings[0].getMessage()

    os.remove(path)
    assert registry.reload() is False and registry.reload() is False
    assert "cannot be read (No such file or directory)" in caplog.text
    write(path, {"tokens": [GOOD, entry("b", B_TOKEN)]})
    assert registry.reload() is True and registry.generation == 2
    assert registry.authenticate(A_TOKEN) is not None


def test_a_forced_reload_reads_a_file_whose_metadata_did_not_change(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGHUP's reload: an edit that keeps inode, size and modification time is read too."""
    caplog.set_level(logging.INFO, "service.core.auth")
    path = write(tmp_path / "tokens.json", {"tokens": [entry("a", A_TOKEN)]})
    registry = TokenRegistry(path)
    stat = path.stat()
    with path.open("r+") as f:  # same inode, same size
        f.write(json.dumps({"tokens": [entry("b", B_TOKEN)]}))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_ino == stat.st_ino
    assert registry.reload() is False and registry.authenticate(B_TOKEN) is None
    assert registry.reload(force=True, trigger="SIGHUP") is True
    assert registry.authenticate(B_TOKEN) is not None
    assert "reloaded on SIGHUP" in caplog.text
    assert registry.reload(force=True, trigger="SIGHUP") is False
    assert "unchanged on SIGHUP" in caplog.text


def test_a_bucket_takes_a_request_whole_or_says_when_it_would_fit() -> None:
    clock = Clock()
    bucket = TokenBucket(5.0, clock.now)
    assert bucket.take(3, clock.now) == 0.0
    assert bucket.take(3, clock.now) == pytest.approx(0.2)  # 2 left, 1 more in 0.2 s
    assert bucket.take(2, clock.now) == 0.0  # the refused request took nothing
    clock.now += 0.5
    assert bucket.take(3, clock.now) == pytest.approx(0.1)
    clock.now += 0.1
    assert bucket.take(3, clock.now) == 0.0
    # More than a second's worth passes only from a full bucket, and leaves it in debt.
    clock.now += 10
    assert bucket.take(12, clock.now) == 0.0
    assert bucket.take(1, clock.now) == pytest.approx(8 / 5)
    assert bucket.take(12, clock.now + 1.0) == pytest.approx(1.4)  # 7 more to a full bucket
    # Slower than a reading a second: one reading at a time, on average at the rate.
    slow = TokenBucket(0.5, clock.now)
    assert slow.take(1, clock.now) == 0.0
    assert slow.take(1, clock.now) == pytest.approx(2.0)


def test_a_tenants_bucket_survives_a_reload_unless_its_rate_changes(tmp_path: Path) -> None:
    clock = Clock()
    limits = {"plant-a": {"readings_per_s": 4}}
    path = write(tmp_path / "tokens.json", {"tokens": [GOOD], "tenants": limits})
    registry = TokenRegistry(path, clock=clock)
    assert registry.readings_wait_s("plant-a", 4) == 0.0
    assert registry.readings_wait_s("plant-a", 1) == pytest.approx(0.25)
    write(path, {"tokens": [GOOD, entry("b", B_TOKEN)], "tenants": limits})
    assert registry.reload()
    assert registry.readings_wait_s("plant-a", 1) == pytest.approx(0.25)  # still spent
    write(path, {"tokens": [GOOD], "tenants": {"plant-a": {"readings_per_s": 8}}})
    assert registry.reload()
    assert registry.readings_wait_s("plant-a", 8) == 0.0  # a new rate, a full bucket


def test_the_metrics_token_file(tmp_path: Path) -> None:
    path = write(tmp_path / "metrics-token", "  scrape-me-123\n")
    token = MetricsToken(path)
    assert token.matches(hash_token("scrape-me-123"))
    assert not token.matches(hash_token("scrape-me-124"))
    write(path, "rotated-456")
    assert token.reload()
    assert token.matches(hash_token("rotated-456"))
    for bad in ("", "  \n", "two words"):
        with pytest.raises(TokenFileError, match="must hold one token"):
            MetricsToken(write(tmp_path / "bad", bad))


# -- lstm-token ----------------------------------------------------------------------------------


def _lstm_token(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.process.tokens_cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_lstm_token_new_prints_a_fresh_token_and_an_entry_the_service_accepts(
    tmp_path: Path,
) -> None:
    made = _lstm_token("new", "--name", "plant-a-writer", "--tenant", "plant-a", "--scopes",
                       "write,read")  # fmt: skip
    assert made.returncode == 0, made.stderr
    lines = dict(line.split(": ", 1) for line in made.stdout.splitlines())
    token, new_entry = lines["token"], json.loads(lines["entry"])
    assert token.startswith("lstm_") and len(token) >= 5 + 43  # 256 random bits, base64
    assert new_entry == {
        "name": "plant-a-writer",
        "sha256": hash_token(token),
        "tenant": "plant-a",
        "scopes": ["write", "read"],
    }
    assert token not in made.stderr
    path = write(tmp_path / "tokens.json", {"tokens": [new_entry]})
    principal = TokenRegistry(path).authenticate(token)
    assert principal is not None and principal.scopes == {"write", "read"}
    checked = _lstm_token("check", str(path))
    assert checked.returncode == 0 and "valid, 1 token(s) of 1 tenant(s)" in checked.stdout

    again = json.loads(_lstm_token("new", "--name", "x", "--scopes", "read", "--json").stdout)
    assert again["token"] != token and again["entry"]["tenant"] == "default"
    assert again["entry"]["sha256"] == hash_token(again["token"])


def test_lstm_token_refuses_what_the_service_would_refuse(tmp_path: Path) -> None:
    bad_scope = _lstm_token("new", "--name", "x", "--scopes", "read,root")
    assert bad_scope.returncode == 2 and "'scopes' must be" in bad_scope.stderr
    assert not bad_scope.stdout  # no token is printed for an entry that would not work
    bad_tenant = _lstm_token("new", "--name", "x", "--tenant", "a/b", "--scopes", "read")
    assert bad_tenant.returncode == 2 and "'tenant' must be" in bad_tenant.stderr
    broken = write(tmp_path / "tokens.json", {"tokens": [{**GOOD, "scopes": []}]})
    checked = _lstm_token("check", str(broken))
    assert checked.returncode == 1
    assert checked.stderr.strip() == (
        f"lstm-token: {broken}: tokens[0] (a): 'scopes' must be a non-empty list of 'read', "
        "'write', 'admin'"
    )


def test_lstm_token_is_a_console_script() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, function = scripts["lstm-token"].partition(":")
    assert module == tokens_cli.__name__ and getattr(tokens_cli, function) is tokens_cli.main


def test_lstm_token_add_creates_then_extends_a_file_the_service_reads(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    first = json.loads(_lstm_token("new", "--name", "w", "--scopes", "write,read", "--add",
                                   str(path), "--json").stdout)  # fmt: skip
    assert path.stat().st_mode & 0o777 == 0o644  # hashes only; a container's user reads it
    path.chmod(0o640)
    second = json.loads(_lstm_token("new", "--name", "r", "--tenant", "plant-b", "--scopes",
                                    "read", "--add", str(path), "--json").stdout)  # fmt: skip
    assert path.stat().st_mode & 0o777 == 0o640  # an existing file keeps its mode
    assert json.loads(path.read_text())["tokens"] == [first["entry"], second["entry"]]
    registry = TokenRegistry(path)
    for made, tenant in ((first, "default"), (second, "plant-b")):
        principal = registry.authenticate(made["token"])
        assert principal is not None and principal.tenant == tenant
    assert first["token"] not in path.read_text() and second["token"] not in path.read_text()

    before = path.read_bytes()
    same_name = _lstm_token("new", "--name", "r", "--scopes", "read", "--add", str(path))
    assert same_name.returncode == 1 and "already has an entry named 'r'" in same_name.stderr
    assert not same_name.stdout  # no token is handed out that the file does not grant
    not_tokens = write(tmp_path / "other.json", {"users": []})
    refused = _lstm_token("new", "--name", "x", "--scopes", "read", "--add", str(not_tokens))
    assert refused.returncode == 1 and "not a tokens file" in refused.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.json", "tokens.json"]
