"""Secrets never leak: not in logs, /metrics, the landing page, exceptions or config errors.

An account with distinctive fake secrets (given inline in a config file, and as ``*_file``
secrets) is registered in the simulator and taken through every fault of the matrix, in process
and in a real exporter process at ``--log.level debug``; ``--demo`` is checked against the demo's
own fake secrets; ``--check-config`` and ConfigError against broken files that hold the secrets.
For each secret S the forbidden texts are S, base64(S), and every prefix of S of six characters or
more; checking S[:6] and base64(S)[:8] (which encodes exactly S[:6]) covers them all, because each
longer prefix, and its base64, begins with those.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, FakeClock, Harness, sim_account
from processes import wait_for

from okx_loan_exporter.cache import MAX_AUTH_BACKOFF
from okx_loan_exporter.config import ConfigError, load_config
from okx_loan_exporter.logs import JsonFormatter, LogfmtFormatter
from okx_loan_exporter.okx import Credentials, OkxClient, OkxError
from okx_loan_exporter.simulator import FAULTS, SimAccount, demo_accounts

API_KEY = "QZXWKV-LEAKCHECK-KEY-93f1c2"
SECRET_KEY = "JBRTYM-LEAKCHECK-SECRET-7a9e44"
PASSPHRASE = "PFHGUD-LEAKCHECK-PASS-5d2b81"
SECRETS = (API_KEY, SECRET_KEY, PASSPHRASE)
NAME = "leakcheck"
TIMEOUT = 0.5
UP = f'okx_loan_up{{account="{NAME}"}} 1.0'
DOCS_EXAMPLE = json.loads((REPO / "tests" / "data" / "loan_info_docs_example.json").read_text())


def forbidden(secrets: Iterable[str]) -> set[str]:
    """S[:6] and base64(S)[:8] for each secret: every prefix of 6+ characters, and its base64."""
    found = set()
    for secret in secrets:
        assert len(secret) >= 6
        found.add(secret[:6])
        found.add(base64.b64encode(secret.encode()).decode()[:8])
    return found


DEMO_SECRETS = tuple(s for a in demo_accounts() for s in (a.api_key, a.secret_key, a.passphrase))


def assert_no_leak(texts: Iterable[str], secrets: Iterable[str] = SECRETS) -> None:
    banned = forbidden(secrets)
    for text in texts:
        for piece in banned:
            assert piece not in text, f"secret material {piece!r} in: {text[:2000]}"


def test_the_chosen_secrets_have_distinct_prefixes_that_are_not_words():
    prefixes = [secret[:6] for secret in SECRETS]
    assert len(set(prefixes)) == len(prefixes)
    assert all(re.fullmatch(r"[A-Z]{6}", prefix) for prefix in prefixes)
    ordinary = "okx_loan_ account demo invalid_response OKX code HTTP".upper()
    assert not any(prefix in ordinary for prefix in prefixes)


def leak_account() -> SimAccount:
    return sim_account(NAME, api_key=API_KEY, secret_key=SECRET_KEY, passphrase=PASSPHRASE)


def write_configs(directory: Path, base_url: str) -> tuple[Path, Path]:
    """The same account twice, both files at mode 0644: secrets inline, and from ``*_file``
    secrets (mode 0600) named relative to the config file."""
    head = (
        f"cache_ttl: 500ms\ntimeout: {TIMEOUT:g}s\nbase_url: {base_url}\n"
        f"accounts:\n  - name: {NAME}\n"
    )
    inline = directory / "inline.yml"
    inline.write_text(
        head + f'    api_key: "{API_KEY}"\n    secret_key: "{SECRET_KEY}"\n'
        f'    passphrase: "{PASSPHRASE}"\n'
    )
    inline.chmod(0o644)
    lines = []
    for key, value in (
        ("api_key", API_KEY),
        ("secret_key", SECRET_KEY),
        ("passphrase", PASSPHRASE),
    ):
        secret_file = directory / f"{key}.txt"
        secret_file.write_text(value + "\n")
        secret_file.chmod(0o600)
        lines.append(f"    {key}_file: {secret_file.name}\n")
    files = directory / "files.yml"
    files.write_text(head + "".join(lines))
    files.chmod(0o644)
    return inline, files


def formatted(records: Iterable[logging.LogRecord]) -> list[str]:
    """Each record as the exporter writes it, in both log formats."""
    return [
        formatter.format(record)
        for record in records
        for formatter in (LogfmtFormatter(), JsonFormatter())
    ]


# --- in process: every fault ---------------------------------------------------------------------


@pytest.mark.usefixtures("offline_dns")
def test_every_fault_in_process_leaks_nothing(
    tmp_path, start_simulator, start_exporter, fake_clock: FakeClock, caplog, closed_port
):
    caplog.set_level(logging.DEBUG, logger="okx_loan_exporter")
    simulator = start_simulator([leak_account()])
    inline_path, files_path = write_configs(tmp_path, simulator.base_url)
    inline, files = load_config(str(inline_path), {}), load_config(str(files_path), {})
    # The same secrets both ways (the file-read ones also know their files, for key rotation).
    assert inline.accounts == tuple(replace(a, secret_files=()) for a in files.accounts)
    texts = [
        repr(inline),
        str(inline),
        repr(files),
        repr(inline.accounts[0]),
        repr(Credentials(API_KEY, SECRET_KEY, PASSPHRASE)),
        *inline.warnings,
    ]
    assert any("holds inline secrets" in warning for warning in inline.warnings)

    def scrape_all(harness: Harness) -> None:
        scrape = harness.scrape("3")
        assert scrape.status == 200
        texts.extend([scrape.text, harness.get("/").text])
        texts.extend(str(s.last_error) for s in harness.exporter.snapshots())

    harness = start_exporter(config=inline)
    for fault in (None, *FAULTS):
        simulator.set_fault(NAME, fault)
        fake_clock.advance(MAX_AUTH_BACKOFF + 1)  # due, whatever backoff the last fault caused
        scrape_all(harness)
    simulator.set_fault(NAME, None)
    simulator.set_clock_skew(120.0)
    fake_clock.advance(MAX_AUTH_BACKOFF + 1)
    scrape_all(harness)
    simulator.set_clock_skew(0.0)

    account = inline.accounts[0]
    for changed in (
        replace(account, demo=True),
        replace(account, base_url="http://okx-test.invalid"),
        replace(account, base_url=f"http://127.0.0.1:{closed_port}"),
    ):
        scrape_all(start_exporter(config=replace(inline, accounts=(changed,))))

    logs = formatted(caplog.records)
    joined = "\n".join(logs)
    for expected in (
        "OKX code 50105",
        "OKX code 50113",
        "OKX code 50101",
        "malformed loan-info",
        "cannot resolve the host",
        "cannot connect",
        "no answer from",
        "the local clock is 120.0 s behind",
        "larger than",
    ):
        assert expected in joined, f"the run never logged {expected!r}: the check proves nothing"
    assert_no_leak(texts + logs)


# --- the OKX client's exceptions -----------------------------------------------------------------


def okx_errors(
    base_url: str,
    clock: Callable[[], float] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    attempts: int = 1,
    before: Callable[[int], None] | None = None,
) -> list[OkxError]:
    """The OkxErrors of ``attempts`` loan-info calls with the leak-check credentials."""

    async def run() -> list[OkxError]:
        errors = []
        async with httpx.AsyncClient(trust_env=False, timeout=TIMEOUT, transport=transport) as http:
            client = OkxClient(
                http,
                base_url,
                Credentials(API_KEY, SECRET_KEY, PASSPHRASE),
                timeout=TIMEOUT,
                clock=clock or time.time,
            )
            for attempt in range(attempts):
                if before is not None:
                    before(attempt)
                try:
                    await client.loan_info()
                except OkxError as error:
                    errors.append(error)
        return errors

    return asyncio.run(run())


def error_texts(errors: Iterable[OkxError]) -> list[str]:
    return [
        text
        for error in errors
        for text in (
            str(error),
            repr(error),
            repr(error.args),
            error.detail,
            error.hint,
            str(error.code),
        )
    ]


def test_okx_errors_of_every_fault_carry_no_secret(start_simulator, fake_clock: FakeClock):
    simulator = start_simulator([leak_account()])
    faults = [
        fault for fault in FAULTS if fault not in ("negative_zero", "empty_strings", "no_loan")
    ]

    def inject(attempt: int) -> None:
        fake_clock.advance(1.0)  # keeps under the simulator's 5 requests per 2 s
        simulator.set_fault(NAME, faults[attempt])

    errors = okx_errors(simulator.base_url, fake_clock, attempts=len(faults), before=inject)
    assert len(errors) == len(faults)
    assert_no_leak(error_texts(errors))


def field_holding(key: str) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        body = copy.deepcopy(DOCS_EXAMPLE)
        body["data"][0]["curLTV"] = request.headers[key]
        return httpx.Response(200, json=body)

    return answer


ECHOES: dict[str, Callable[[httpx.Request], httpx.Response]] = {
    "msg repeats the key": lambda r: httpx.Response(
        401,
        json={
            "code": "50111",
            "msg": f"Invalid OK-ACCESS-KEY {r.headers['OK-ACCESS-KEY']}",
            "data": [],
        },
    ),
    "msg repeats the passphrase": lambda r: httpx.Response(
        401,
        json={"code": "50105", "msg": f"passphrase {r.headers['OK-ACCESS-PASSPHRASE']} is wrong"},
    ),
    "msg repeats every header": lambda r: httpx.Response(
        400, json={"code": "50000", "msg": json.dumps(dict(r.headers))}
    ),
    "code is the key": lambda r: httpx.Response(
        401, json={"code": r.headers["OK-ACCESS-KEY"], "msg": ""}
    ),
    "a number field holds the key": field_holding("OK-ACCESS-KEY"),
    "a number field holds the passphrase": field_holding("OK-ACCESS-PASSPHRASE"),
    "an HTML page repeats the headers": lambda r: httpx.Response(
        502, html=f"<pre>{dict(r.headers)}</pre>"
    ),
}


@pytest.mark.parametrize("answer", ECHOES.values(), ids=ECHOES.keys())
def test_answers_that_repeat_the_credentials_are_withheld(answer):
    (error,) = okx_errors("https://okx.test", transport=httpx.MockTransport(answer))
    assert_no_leak(error_texts([error]))


# --- configuration errors ------------------------------------------------------------------------

SECRET_LINES = (
    f'    api_key: "{API_KEY}"\n    secret_key: "{SECRET_KEY}"\n    passphrase: "{PASSPHRASE}"\n'
)


def account_file(
    extra: str = "",
    secrets: str = SECRET_LINES,
    top: str = "cache_ttl: 10s\n",
) -> str:
    return f"{top}accounts:\n  - name: {NAME}\n{secrets}{extra}"


BROKEN: dict[str, tuple[str, str]] = {
    # name: (file text, what the message must name)
    "unknown key next to the secrets": (account_file("    label: x\n"), "accounts[0].label"),
    "bad duration": (account_file(top="cache_ttl: 10 minutes\n"), "cache_ttl"),
    "unknown top-level key": (account_file(top="cache_tll: 10s\n"), "cache_tll"),
    "unclosed quote on the secret's line": (
        account_file(secrets=SECRET_LINES.replace(f'"{PASSPHRASE}"', f'"{PASSPHRASE}')),
        "invalid YAML",
    ),
    "tab before the secret": (
        account_file(secrets=SECRET_LINES.replace('passphrase: "', 'passphrase:\t"')),
        "invalid YAML",
    ),
    "the secret in a list": (
        account_file(secrets=SECRET_LINES.replace(f'"{PASSPHRASE}"', f"[{PASSPHRASE}]")),
        "accounts[0].passphrase",
    ),
    "the secret as a mapping": (
        account_file(secrets=SECRET_LINES.replace(f'"{PASSPHRASE}"', f"{{{PASSPHRASE}: 1}}")),
        "accounts[0].passphrase",
    ),
    "a control character inside the secret": (
        account_file(
            secrets=SECRET_LINES.replace(PASSPHRASE, PASSPHRASE[:6] + "\\u0007" + PASSPHRASE[6:])
        ),
        "accounts[0].passphrase",
    ),
    "the secret split by a line break": (
        account_file(
            secrets=SECRET_LINES.replace(PASSPHRASE, PASSPHRASE[:6] + "\\n" + PASSPHRASE[6:])
        ),
        "accounts[0].passphrase",
    ),
    "the same key on two accounts": (
        account_file(SECRET_LINES.replace("    api_key", "  - name: twin\n    api_key", 1)),
        "accounts[1].api_key",
    ),
    "a secret and its file": (
        account_file(f"    secret_key_file: {SECRET_KEY}\n"),
        "secret_key_file",
    ),
}

FORMER_LEAKS: dict[str, tuple[str, str]] = {
    # Realistic mistakes whose message used to repeat the secret (now fixed in config.py).
    "the secret given as *_env": (
        account_file(secrets=SECRET_LINES.replace("secret_key:", "secret_key_env:")),
        "secret_key_env",
    ),
    "the secret given as *_env, a valid variable name": (
        account_file(
            secrets=SECRET_LINES.replace(
                f'passphrase: "{PASSPHRASE}"', f"passphrase_env: {PASSPHRASE.replace('-', '_')}"
            )
        ),
        "passphrase_env",
    ),
    "the secret given as *_file": (
        account_file(secrets=SECRET_LINES.replace("secret_key:", "secret_key_file:")),
        "secret_key_file",
    ),
    "an unquoted passphrase starting with *": (
        account_file(secrets=SECRET_LINES.replace(f'"{PASSPHRASE}"', f"*{PASSPHRASE}")),
        "invalid YAML",
    ),
    "an unquoted passphrase starting with !": (
        account_file(secrets=SECRET_LINES.replace(f'"{PASSPHRASE}"', f"!{PASSPHRASE}")),
        "invalid YAML",
    ),
}


CLI_BROKEN = (
    "unknown key next to the secrets",
    "bad duration",
    "unclosed quote on the secret's line",
    "the same key on two accounts",
)


def config_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_config(str(path), {})
    return caught.value


@pytest.mark.parametrize(("text", "names"), BROKEN.values(), ids=BROKEN.keys())
def test_config_errors_carry_no_secret(text: str, names: str, tmp_path: Path):
    path = tmp_path / "config.yml"
    path.write_text(text)
    error = config_error(path)
    assert names in str(error)
    assert_no_leak([str(error), repr(error), repr(error.args), error.key, error.problem])


@pytest.mark.parametrize(("text", "names"), FORMER_LEAKS.values(), ids=FORMER_LEAKS.keys())
def test_config_errors_of_likely_mistakes_carry_no_secret(text: str, names: str, tmp_path: Path):
    path = tmp_path / "config.yml"
    path.write_text(text)
    error = config_error(path)
    assert names in str(error)
    assert_no_leak([str(error), repr(error)])


@pytest.mark.subprocess
def test_check_config_prints_no_secret(tmp_path: Path):
    """``--check-config`` on broken files (exit 2) and on a good one (exit 0), in parallel.

    The CLI prints the ConfigError checked above; a few kinds of error are enough here.
    """
    cases = {name: BROKEN[name][0] for name in CLI_BROKEN}
    cases["good"] = account_file()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OKX_")}
    runs = {}
    for name, text in cases.items():
        path = tmp_path / f"{name}.yml"
        path.write_text(text)
        runs[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "okx_loan_exporter",
                "--config.file",
                str(path),
                "--check-config",
                "--log.level",
                "debug",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    for name, run in runs.items():
        out, err = run.communicate(timeout=30)
        assert run.returncode == (0 if name == "good" else 2), (name, out, err)
        assert (out if name == "good" else err).strip(), name  # it did say something
        assert_no_leak([out, err])


# --- real processes ------------------------------------------------------------------------------


SUBPROCESS_FAULTS = ("invalid_json", "http_500_html", "huge_body", "hang", "auth_50113")
"""Faults run through the exporter process (the auth one last: its backoff grows)."""


def debug_exporter(exporter_process, config: Path) -> tuple[Any, str]:
    """The exporter as a process at debug level with ``config``, and its URL once it serves."""
    process = exporter_process(
        "--config.file", str(config), "--log.level", "debug", "--web.listen-address", "127.0.0.1:0"
    )
    return process, process.wait_serving()


@pytest.mark.subprocess
def test_exporter_process_at_debug_level_leaks_nothing(
    tmp_path: Path, start_simulator, exporter_process
):
    simulator = start_simulator([leak_account()], clock=time.time)
    inline, _ = write_configs(tmp_path, simulator.base_url)
    process, url = debug_exporter(exporter_process, inline)
    texts: list[str] = []
    http = httpx.Client(trust_env=False, timeout=10)

    def scrape() -> None:
        texts.append(http.get(f"{url}/metrics").text)
        texts.append(http.get(f"{url}/").text)

    def requests() -> int:
        return int(simulator.stats()["accounts"][NAME]["requests"])

    def next_request(sent: int) -> Callable[[], bool]:
        def seen() -> bool:
            scrape()
            return requests() > sent

        return seen

    try:
        wait_for("the exporter's first OKX request", next_request(0), 10.0)
        steps: list[Callable[[], None]] = [
            lambda: simulator.set_clock_skew(120.0),
            lambda: simulator.set_clock_skew(0.0),
        ]
        steps += [
            lambda fault=fault: simulator.set_fault(NAME, fault) for fault in SUBPROCESS_FAULTS
        ]
        for step in steps:
            sent = requests()
            step()
            wait_for("the exporter's next OKX request", next_request(sent), 10.0)
    finally:
        http.close()
        process.stop()

    for expected in (
        "level=debug",
        "OKX request failed: auth: OKX code 50113",
        "answer is not JSON",
        "no answer from",
        "50102",
    ):
        assert expected in process.stderr, f"the run never logged {expected!r}"
    warning = (
        f"{inline}: holds inline secrets (accounts[0].api_key, accounts[0].secret_key, "
        "accounts[0].passphrase) and is readable by group/others (mode 0644)"
    )
    assert process.stderr.count(warning) == 1
    assert_no_leak([process.stdout, process.stderr, *texts])


@pytest.mark.subprocess
def test_permission_warning_only_for_inline_secrets_readable_by_others(
    tmp_path: Path, start_simulator, exporter_process
):
    simulator = start_simulator([leak_account()], clock=time.time)
    inline, files = write_configs(tmp_path, simulator.base_url)
    private = tmp_path / "private.yml"
    private.write_text(inline.read_text())
    private.chmod(0o600)
    processes = {
        path: exporter_process("--config.file", str(path), "--web.listen-address", "127.0.0.1:0")
        for path in (inline, private, files)
    }
    with httpx.Client(trust_env=False, timeout=10) as http:
        for process in processes.values():
            url = process.wait_serving()
            # Up proves the secrets were read; polled, as a loaded machine may miss one deadline.
            wait_for("the account up", lambda url=url: UP in http.get(f"{url}/metrics").text, 10.0)
    for process in processes.values():
        process.stop()
    assert "holds inline secrets" in processes[inline].stderr
    assert "chmod 600" in processes[inline].stderr
    assert "holds inline secrets" not in processes[private].stderr
    assert "holds inline secrets" not in processes[files].stderr  # 0644, but no secret inside
    assert "level=warning" not in processes[private].stderr + processes[files].stderr
    for process in processes.values():
        assert_no_leak([process.stdout, process.stderr])


@pytest.mark.subprocess
def test_demo_leaks_neither_its_own_secrets_nor_others(exporter_process):
    process = exporter_process(
        "--demo", "--web.listen-address", "127.0.0.1:0", "--log.level", "debug"
    )
    url = process.wait_serving()
    match = re.search(r"simulated accounts at (http://[0-9.:]+)", process.stderr_so_far())
    assert match, process.stderr_so_far()
    simulator_url = match.group(1)
    faults = {
        "btc-usdt": "auth_50111",
        "okx-docs-example": "invalid_json",
        "eth-usdc": "rate_limit",
        "no-loan": "http_500_html",
        "demo-trading": "auth_50105",
        "two-orders": "duplicate_order",
    }
    texts = []
    with httpx.Client(trust_env=False, timeout=10) as http:
        texts += [http.get(f"{url}/metrics").text, http.get(f"{url}/").text]
        for name, fault in faults.items():
            answer = http.post(f"{simulator_url}/sim/accounts/{name}", json={"fault": fault})
            assert answer.status_code == 200, answer.text

        def all_down() -> bool:
            texts.append(http.get(f"{url}/metrics").text)
            return all(f'okx_loan_up{{account="{name}"}} 0.0' in texts[-1] for name in faults)

        wait_for("every account down", all_down, 10.0)
        texts.append(http.get(f"{url}/").text)
    assert process.stop() == 0
    assert "OKX code 50105" in process.stderr
    assert_no_leak([process.stdout, process.stderr, *texts], DEMO_SECRETS + SECRETS)


NEW_PASSPHRASE = "RTNWPQ-LEAKCHECK-ROTATED-0c4e19"


@pytest.mark.subprocess
def test_reload_and_key_rotation_leak_nothing(tmp_path: Path, start_simulator, exporter_process):
    simulator = start_simulator([leak_account()], clock=time.time)
    inline, files = write_configs(tmp_path, simulator.base_url)
    process, url = debug_exporter(exporter_process, files)
    texts: list[str] = []
    http = httpx.Client(trust_env=False, timeout=10)

    def scrape() -> str:
        body = http.get(f"{url}/metrics").text
        texts.append(body)
        return body

    def reload() -> httpx.Response:
        answer = http.post(f"{url}/-/reload")
        texts.append(answer.text)
        return answer

    try:
        wait_for("the account up", lambda: UP in scrape(), 10.0)
        # The key rotated at OKX, then in its file; a broken version of the file on the way.
        simulator.set_credentials(NAME, passphrase=NEW_PASSPHRASE)
        wait_for("the old passphrase refused", lambda: UP not in scrape(), 10.0)
        (tmp_path / "passphrase.txt").write_text(f"{NEW_PASSPHRASE}\n{PASSPHRASE}\n")
        wait_for(
            "the broken file refused",
            lambda: scrape() and "keeping the passphrase in use" in process.stderr_so_far(),
            10.0,
        )
        assert reload().status_code == 500  # refused as at start
        (tmp_path / "passphrase.txt").write_text(NEW_PASSPHRASE)
        wait_for("the rotated key in use", lambda: UP in scrape(), 10.0)
        assert reload().status_code == 200
        # Reloads refused for files that hold the secrets in the wrong places.
        files.write_text(inline.read_text() + f"  - name: {NEW_PASSPHRASE}\n")
        assert reload().status_code == 500
        files.write_text(inline.read_text().replace(f'"{API_KEY}"', f"[{API_KEY}]"))
        process.process.send_signal(signal.SIGHUP)
        wait_for(
            "the failed SIGHUP reload",
            lambda: process.stderr_so_far().count("reload failed:") == 3,
            5.0,
        )
        scrape()
    finally:
        http.close()
        process.stop()
    assert "changed on disk" in process.stderr
    assert "keeping the passphrase in use" in process.stderr
    assert process.stderr.count("reload failed:") == 3
    assert_no_leak([process.stdout, process.stderr, *texts], (*SECRETS, NEW_PASSPHRASE))
