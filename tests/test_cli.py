"""The command line, called in-process: refusals, --check-config, --version, the example config."""

import json
import logging
import os
import signal
import threading
from pathlib import Path

import pytest

from okx_loan_exporter import __version__
from okx_loan_exporter.cli import _signal_pipe, _wait_for_signal, main

EXAMPLE = Path(__file__).parent.parent / "examples" / "config.yml"


def example_with_secrets(tmp_path):
    for name in ("okx_api_key", "okx_secret_key", "okx_passphrase"):
        (tmp_path / name).write_text(f"cli-test-{name}\n")
    config = tmp_path / "config.yml"
    config.write_text(EXAMPLE.read_text().replace("/run/secrets", str(tmp_path)))
    return config


def test_example_config_is_valid(tmp_path, capsys):
    assert main(["--config.file", str(example_with_secrets(tmp_path)), "--check-config"]) == 0
    assert "configuration OK" in capsys.readouterr().out


def test_bad_config_is_refused_with_exit_2_and_one_line_per_problem(tmp_path, capsys):
    config = tmp_path / "bad.yml"
    config.write_text("cache_ttl: 0.1s\naccounts: []\n")
    assert main(["--config.file", str(config), "--check-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        f"okx-loan-exporter: {config}: cache_ttl: 0.1s is too short; raise cache_ttl to at least"
        " 0.5s; OKX allows 5 requests per 2 s",
        f"okx-loan-exporter: {config}: accounts: is empty; add at least one account with a name"
        " and its secrets",
    ]


def test_problems_of_both_files_are_listed(tmp_path, capsys):
    config = tmp_path / "bad.yml"
    config.write_text("accounts: []\n")
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: '$2b$17$" + "A" * 53 + "'\n")
    assert (
        main(["--config.file", str(config), "--web.config.file", str(web), "--check-config"]) == 2
    )
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert f"web config file {web}: basic_auth_users.alice: bcrypt cost 17 is above 16" in lines[0]
    assert f"{config}: accounts: is empty" in lines[1]


def test_fatal_errors_are_json_with_log_format_json(tmp_path, capsys):
    config = tmp_path / "bad.yml"
    config.write_text("cache_ttl: 0.1s\naccounts: []\n")
    argv = ["--log.format", "json", "--config.file", str(config), "--check-config"]
    assert main(argv) == 2
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [record["level"] for record in records] == ["error", "error"]
    assert records[0]["msg"].startswith(f"{config}: cache_ttl: 0.1s is too short")
    assert records[1]["msg"].startswith(f"{config}: accounts: is empty")


def test_a_bad_flag_is_json_too_with_log_format_json(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--log.format=json", "--log.level", "loud"])
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["level"] == "error" and "--log.level" in record["msg"]


def test_log_level_warn_is_accepted_as_in_prometheus(tmp_path, capsys):
    argv = ["--log.level", "warn", "--config.file", str(example_with_secrets(tmp_path))]
    assert main([*argv, "--check-config"]) == 0
    assert logging.getLogger().level == logging.WARNING


def test_plain_http_base_url_warns_in_check_config(tmp_path, capsys):
    config = example_with_secrets(tmp_path)
    text = config.read_text().replace("https://www.okx.com", "http://okx.example.net")
    assert "http://okx.example.net" in text
    config.write_text(text)
    assert main(["--config.file", str(config), "--check-config"]) == 0
    err = capsys.readouterr().err
    assert "level=warning" in err and "base_url: http://okx.example.net is plain HTTP" in err


def test_high_bcrypt_cost_warns_at_start(tmp_path, capsys):
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  alice: '$2b$13$" + "A" * 53 + "'\n")
    argv = ["--config.file", str(example_with_secrets(tmp_path)), "--web.config.file", str(web)]
    assert main([*argv, "--check-config"]) == 0
    assert "basic_auth_users.alice: bcrypt cost 13 is above 12" in capsys.readouterr().err


def test_missing_environment_credentials(monkeypatch, capsys):
    for var in (
        "OKX_API_KEY",
        "OKX_API_KEY_FILE",
        "OKX_SECRET_KEY",
        "OKX_SECRET_KEY_FILE",
        "OKX_PASSPHRASE",
        "OKX_PASSPHRASE_FILE",
    ):
        monkeypatch.delenv(var, raising=False)
    assert main(["--check-config"]) == 2
    assert "environment: OKX_API_KEY" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--web.listen-address", "nonsense", "--check-config", "--demo"], "--web.listen-address"),
        (["--demo", "--config.file", "x.yml"], "exclude each other"),
        (["--web.config.file", "/nonexistent/web.yml", "--demo", "--check-config"], "web.yml"),
    ],
)
def test_bad_flags_are_refused(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--log.level", "loud"], ["--no-such-flag"]])
def test_unknown_flag_values_exit_2(argv):
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_inline_secrets_in_readable_file_warn_at_start(tmp_path, capsys):
    config = tmp_path / "inline.yml"
    config.write_text(
        "accounts:\n  - name: a\n    api_key: k-9f8e7d\n    secret_key: s-1a2b3c\n"
        "    passphrase: p-4d5e6f\n"
    )
    config.chmod(0o644)
    assert main(["--config.file", str(config), "--check-config"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "chmod 600" in err and str(config) in err
    assert "9f8e7d" not in err and "1a2b3c" not in err and "4d5e6f" not in err
    config.chmod(0o600)
    assert main(["--config.file", str(config), "--check-config"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5"])
def test_max_connections_must_be_a_whole_number_of_1_or_more(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--web.max-connections", value, "--check-config"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--web.max-connections: {value!r} is not a whole number of 1 or more" in err


def test_signals_reach_the_waiting_main_thread_through_the_pipe():
    previous = signal.getsignal(signal.SIGUSR1)
    with _signal_pipe((signal.SIGUSR1, signal.SIGUSR2)) as read_end:
        sender = threading.Thread(
            target=lambda: (
                [os.kill(os.getpid(), signal.SIGUSR1) for _ in range(200)]
                + [os.kill(os.getpid(), signal.SIGUSR2)]
            )
        )
        sender.start()
        # SIGUSR1 bytes arrive too (the pipe carries every signal with a handler); only the
        # wanted one ends the wait, however many others come first.
        assert _wait_for_signal(read_end, {signal.SIGUSR2}) == signal.SIGUSR2
        sender.join()
    assert signal.getsignal(signal.SIGUSR1) == previous
