"""Tests for okx_loan_exporter.basicauth: bcrypt checks, their cache and bound, the middleware."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterable
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import bcrypt
import pytest
from processes import wait_for
from test_webconfig import ALICE_2Y, BOB_2B, BOB_PASSWORD, PASSWORD, basic, write

from okx_loan_exporter import basicauth
from okx_loan_exporter.basicauth import AuthBusy, BasicAuth, auth_middleware
from okx_loan_exporter.webconfig import WebConfigWatcher

USERS = {"alice": ALICE_2Y.encode(), "bob": BOB_2B.encode()}


@pytest.fixture
def checkpw_calls(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Records the hash of every bcrypt.checkpw call the module makes."""
    calls: list[bytes] = []
    real = bcrypt.checkpw

    def spy(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(basicauth.bcrypt, "checkpw", spy)
    return calls


@pytest.mark.parametrize(
    ("authorization", "ok"),
    [
        (basic("alice", PASSWORD), True),  # $2y$ hash
        (basic("bob", BOB_PASSWORD), True),  # $2b$ hash
        ("basic " + basic("bob", BOB_PASSWORD)[6:], True),  # scheme is case-insensitive
        (basic("alice", BOB_PASSWORD), False),
        (basic("alice", ""), False),
        (basic("alice", PASSWORD + " "), False),
        (basic("mallory", PASSWORD), False),
        (None, False),
        ("", False),
        ("Basic", False),
        ("Basic !!!not-base64!!!", False),
        ("Basic " + base64.b64encode(b"alice").decode(), False),  # no colon
        ("Basic " + base64.b64encode(b"\xff\xfe:pw").decode(), False),  # not UTF-8
        ("Bearer " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode(), False),
    ],
)
def test_check(authorization: str | None, ok: bool) -> None:
    assert BasicAuth().check(USERS, authorization) is ok


def test_unknown_user_pays_one_bcrypt_check_of_the_same_cost(checkpw_calls: list[bytes]) -> None:
    users = {"alice": bcrypt.hashpw(b"pw", bcrypt.gensalt(5))}
    assert BasicAuth().check(users, basic("mallory", "pw")) is False
    assert len(checkpw_calls) == 1
    dummy = checkpw_calls[0]
    assert dummy not in users.values()
    assert dummy[4:6] == b"05"  # same cost as the configured hash


def test_wrong_password_pays_one_bcrypt_check_and_is_not_cached(
    checkpw_calls: list[bytes],
) -> None:
    auth = BasicAuth()
    assert auth.check(USERS, basic("alice", "wrong")) is False
    assert auth.check(USERS, basic("alice", "wrong")) is False
    assert checkpw_calls == [USERS["alice"], USERS["alice"]]


def test_success_is_cached(checkpw_calls: list[bytes]) -> None:
    auth = BasicAuth()
    for _ in range(5):
        assert auth.check(USERS, basic("alice", PASSWORD)) is True
    assert len(checkpw_calls) == 1
    # A different password for the same user is not let in by the cache.
    assert auth.check(USERS, basic("alice", PASSWORD + "x")) is False
    assert len(checkpw_calls) == 2


def test_changed_hash_is_not_answered_from_the_cache(checkpw_calls: list[bytes]) -> None:
    auth = BasicAuth()
    assert auth.check(USERS, basic("alice", PASSWORD)) is True
    new_users = {"alice": bcrypt.hashpw(b"new password", bcrypt.gensalt(4))}
    assert auth.check(new_users, basic("alice", PASSWORD)) is False
    assert auth.check(new_users, basic("alice", "new password")) is True


def test_cache_is_bounded(checkpw_calls: list[bytes]) -> None:
    auth = BasicAuth(cache_size=2)
    users = {"alice": USERS["alice"], "bob": USERS["bob"]}
    other = bcrypt.hashpw(b"carol-pw", bcrypt.gensalt(4))
    users["carol"] = other
    for user, password in (("alice", PASSWORD), ("bob", BOB_PASSWORD), ("carol", "carol-pw")):
        assert auth.check(users, basic(user, password))
    assert len(checkpw_calls) == 3
    assert auth.check(users, basic("carol", "carol-pw"))  # still cached
    assert len(checkpw_calls) == 3
    assert auth.check(users, basic("alice", PASSWORD))  # evicted, checked again
    assert len(checkpw_calls) == 4


def test_password_longer_than_bcrypt_allows_is_refused_after_equal_work(
    checkpw_calls: list[bytes],
) -> None:
    long_password = "x" * 73
    users = {"alice": bcrypt.hashpw(long_password[:72].encode(), bcrypt.gensalt(4))}
    # bcrypt looks at 72 bytes only; refusing longer ones keeps the extra bytes from being ignored.
    assert BasicAuth().check(users, basic("alice", long_password)) is False
    assert checkpw_calls == [users["alice"]]
    assert BasicAuth().check(users, basic("alice", long_password[:72])) is True


def test_concurrent_checks_are_right_and_pay_bcrypt_once_per_credential(
    checkpw_calls: list[bytes],
) -> None:
    auth = BasicAuth(max_waiting=16)  # room for every distinct check started here
    start = threading.Barrier(40)
    results: dict[int, bool] = {}

    def scrape(i: int) -> None:
        start.wait()
        if i % 4 == 0:
            results[i] = auth.check(USERS, basic("alice", f"wrong-{i}"))
        else:
            results[i] = auth.check(USERS, basic("alice", PASSWORD))

    threads = [threading.Thread(target=scrape, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: i % 4 != 0 for i in range(40)}
    # 10 different wrong passwords each pay bcrypt; 30 concurrent right ones pay it once.
    assert len(checkpw_calls) == 11
    assert auth.pending == 0


class SlowVerifier:
    """A bcrypt stand-in that holds every wrong password until released, counting who is inside."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.inside = 0
        self.most_inside = 0
        self.calls = 0

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self.lock:
            self.calls += 1
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            if password != PASSWORD.encode():
                assert self.release.wait(timeout=30), "never released"
            return password == PASSWORD.encode()
        finally:
            with self.lock:
                self.inside -= 1


def test_bcrypt_runs_a_few_at_a_time_and_refuses_beyond_the_queue_without_work() -> None:
    verifier = SlowVerifier()
    auth = BasicAuth(workers=2, max_waiting=3, verify=verifier)
    assert auth.check(USERS, basic("alice", PASSWORD))  # a scraper that logged in before
    verifier.calls = 0
    outcomes: list[object] = []

    def attacker(i: int) -> None:
        try:
            outcomes.append(auth.check(USERS, basic("alice", f"guess-{i}")))
        except AuthBusy as busy:
            outcomes.append(busy)

    attackers = [threading.Thread(target=attacker, args=(i,)) for i in range(5)]
    for thread in attackers:
        thread.start()
    wait_for(
        "2 checks running, 5 pending",
        lambda: verifier.inside == 2 and auth.pending == 5,
        10.0,
        interval=0.001,
    )

    with pytest.raises(AuthBusy):  # the sixth new check: refused at once, no bcrypt work
        auth.check(USERS, basic("mallory", "guess-6"))
    with pytest.raises(AuthBusy):
        auth.check(USERS, basic("alice", "guess-7"))
    assert verifier.calls == 2
    # The scraper's verified credentials are answered from the cache, without waiting.
    assert auth.check(USERS, basic("alice", PASSWORD)) is True
    assert auth.check(USERS, None) is False  # no credentials: no bcrypt, no queue

    verifier.release.set()
    for thread in attackers:
        thread.join()
    assert outcomes == [False] * 5
    assert verifier.most_inside == 2
    assert verifier.calls == 5
    assert auth.pending == 0
    # With the queue drained, new checks run again.
    assert auth.check(USERS, basic("alice", "guess-8")) is False


def test_basic_auth_repr_shows_no_secret() -> None:
    auth = BasicAuth()
    assert auth.check(USERS, basic("alice", PASSWORD))
    assert PASSWORD not in repr(auth)
    assert ALICE_2Y not in repr(auth)


# --- middleware (unit level; over real HTTP in test_server.py) ------------------------------


def _app(environ: dict, start_response) -> Iterable[bytes]:  # type: ignore[no-untyped-def]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok " + environ["PATH_INFO"].encode()]


def _call(app, path: str, authorization: str | None = None) -> tuple[str, dict[str, str], bytes]:  # type: ignore[no-untyped-def]
    environ: dict = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    captured: dict = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info=None):  # type: ignore[no-untyped-def]
        captured["status"], captured["headers"] = status, dict(headers)

    body = b"".join(app(environ, start_response))
    return captured["status"], captured["headers"], body


def test_middleware_without_users_lets_everyone_in(tmp_path: Path) -> None:
    app = auth_middleware(_app, WebConfigWatcher(None))
    assert _call(app, "/metrics")[0] == "200 OK"
    app = auth_middleware(_app, WebConfigWatcher(str(write(tmp_path / "web.yml", ""))))
    assert _call(app, "/metrics")[0] == "200 OK"


def test_middleware_with_users(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{ALICE_2Y}'\n")
    app = auth_middleware(_app, WebConfigWatcher(str(path)))
    assert _call(app, "/metrics", basic("alice", PASSWORD)) == (
        "200 OK",
        {"Content-Type": "text/plain"},
        b"ok /metrics",
    )
    status, headers, body = _call(app, "/metrics", basic("alice", "nope"))
    assert status == "401 Unauthorized"
    assert headers["WWW-Authenticate"] == 'Basic realm="okx-loan-exporter"'
    assert body == b"Unauthorized\n"
    assert _call(app, "/")[0] == "401 Unauthorized"
    assert _call(app, "/-/ready")[0] == "401 Unauthorized"
    assert _call(app, "/-/healthy")[0] == "200 OK"
    assert _call(app, "/-/healthy/x")[0] == "401 Unauthorized"


def test_middleware_exempt_paths_are_configurable(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{ALICE_2Y}'\n")
    app = auth_middleware(_app, WebConfigWatcher(str(path)), exempt_paths=("/-/ready",))
    assert _call(app, "/-/ready")[0] == "200 OK"
    assert _call(app, "/-/healthy")[0] == "401 Unauthorized"


def test_middleware_answers_503_with_retry_after_when_bcrypt_is_saturated(tmp_path: Path) -> None:
    path = write(tmp_path / "web.yml", f"basic_auth_users:\n  alice: '{ALICE_2Y}'\n")
    verifier = SlowVerifier()
    auth = BasicAuth(workers=1, max_waiting=0, verify=verifier)
    app = auth_middleware(_app, WebConfigWatcher(str(path)), auth=auth)
    assert _call(app, "/metrics", basic("alice", PASSWORD))[0] == "200 OK"
    held = threading.Thread(target=_call, args=(app, "/metrics", basic("alice", "guess-1")))
    held.start()
    wait_for("1 check running", lambda: verifier.inside == 1, 10.0, interval=0.001)
    status, headers, body = _call(app, "/metrics", basic("alice", "guess-2"))
    assert (status, headers["Retry-After"]) == ("503 Service Unavailable", "1")
    assert b"retry later" in body
    assert _call(app, "/metrics", basic("alice", PASSWORD))[0] == "200 OK"  # cached: still in
    verifier.release.set()
    held.join()
    assert verifier.calls == 2
