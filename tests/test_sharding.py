"""``--shard INDEX/COUNT``: a stable split of one config's accounts over COUNT exporters, checked
in process and with three real exporter processes over one config and one simulator."""

from __future__ import annotations

import hashlib
import time
from collections import Counter

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from okx_loan_exporter.cli import main
from okx_loan_exporter.sharding import Shard, ShardError, parse_shard, shard_of
from okx_loan_exporter.simulator import exporter_config_yaml, generated_accounts

NAMES = [f"acct-{i:04d}" for i in range(1, 1001)]


def test_shard_of_is_sha256_of_the_name_modulo_count():
    # Fixed values: the split must not change between versions, machines or Python runs.
    assert [shard_of(name, 3) for name in NAMES[:12]] == [2, 1, 1, 1, 1, 1, 2, 1, 2, 2, 0, 2]
    digest = hashlib.sha256(b"main").digest()
    assert shard_of("main", 1000) == int.from_bytes(digest[:8], "big") % 1000 == 51


@pytest.mark.parametrize("count", [1, 2, 3, 7, 64])
def test_the_shards_cover_every_account_exactly_once_and_evenly(count):
    owners = Counter()
    for name in NAMES:
        (owner,) = [index for index in range(count) if Shard(index, count).owns(name)]
        owners[owner] += 1
    assert sum(owners.values()) == len(NAMES)
    expected = len(NAMES) / count
    assert all(abs(owners[index] - expected) < 4 * expected**0.5 + 2 for index in range(count))


def test_select_keeps_the_config_order():
    shard = Shard(1, 3)
    selected = shard.select([_Named(name) for name in NAMES[:12]])
    assert [item.name for item in selected] == [n for n in NAMES[:12] if shard_of(n, 3) == 1]


class _Named:
    def __init__(self, name: str) -> None:
        self.name = name


@pytest.mark.parametrize(("text", "shard"), [("0/1", Shard(0, 1)), (" 2/3 ", Shard(2, 3))])
def test_parse_shard(text, shard):
    assert parse_shard(text) == shard
    assert str(shard) == text.strip()


@pytest.mark.parametrize("text", ["", "3/3", "1", "1/0", "-1/3", "a/b", "1/3/5", "1 / 3", "0x1/3"])
def test_parse_shard_refuses(text):
    with pytest.raises(ShardError):
        parse_shard(text)


def write_config(tmp_path, count: int = 15) -> tuple[str, list[str]]:
    accounts = generated_accounts(count)
    path = tmp_path / "exporter.yml"
    path.write_text(exporter_config_yaml("http://127.0.0.1:9", accounts))
    path.chmod(0o600)
    return str(path), [account.name for account in accounts]


@pytest.mark.parametrize(
    ("argv", "env", "says"),
    [
        (
            ["--shard", "3/3"],
            {},
            "--shard: '3/3' needs 0 <= INDEX < COUNT",
        ),
        (
            ["--shard", "x"],
            {},
            "--shard: 'x' is not INDEX/COUNT",
        ),
        (
            [],
            {"OKX_SHARD": "1/"},
            "OKX_SHARD: '1/' is not INDEX/COUNT",
        ),
    ],
)
def test_a_bad_shard_is_refused_with_exit_2(tmp_path, monkeypatch, capsys, argv, env, says):
    config, _ = write_config(tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["--config.file", config, "--check-config", *argv]) == 2
    assert capsys.readouterr().err.strip() == (
        f"okx-loan-exporter: {says}; write it like 0/3 (the first of three exporters)"
    )


def test_check_config_lists_the_shards_accounts(tmp_path, monkeypatch, capsys):
    config, names = write_config(tmp_path)
    monkeypatch.setenv("OKX_SHARD", "2/3")  # the flag wins over the environment
    assert main(["--config.file", config, "--check-config", "--shard", "0/3"]) == 0
    mine = [name for name in names if shard_of(name, 3) == 0]
    assert capsys.readouterr().out.strip() == (
        f"configuration OK: {config}: {len(mine)} account(s) in shard 0/3: {', '.join(mine)}"
    )


def test_shard_and_demo_exclude_each_other(capsys):
    assert main(["--demo", "--shard", "0/2", "--check-config"]) == 2
    assert "--shard and --demo exclude each other" in capsys.readouterr().err


def test_three_exporter_processes_split_one_config(tmp_path, start_simulator, exporter_process):
    """Three real exporters, the same config, shards 0/3, 1/3 (flag) and 2/3 (environment): the
    accounts they export are the config's, none twice, and every simulated account's requests
    all came from the one exporter that exports it."""
    accounts = generated_accounts(15)
    simulator = start_simulator(accounts, clock=time.time)
    config = tmp_path / "exporter.yml"
    config.write_text(exporter_config_yaml(simulator.base_url, accounts))
    config.chmod(0o600)
    processes = [
        exporter_process(
            "--config.file", str(config), "--web.listen-address", "127.0.0.1:0", "--shard", "0/3"
        ),
        exporter_process(
            "--config.file", str(config), "--web.listen-address", "127.0.0.1:0", "--shard", "1/3"
        ),
        exporter_process(
            "--config.file",
            str(config),
            "--web.listen-address",
            "127.0.0.1:0",
            env={"OKX_SHARD": "2/3"},
        ),
    ]
    urls = [process.wait_serving() for process in processes]
    exported: list[dict[str, float]] = []  # per process: account -> requests it sent
    for url in urls:
        text = httpx.get(f"{url}/metrics", timeout=30).text
        requests = {}
        for family in text_string_to_metric_families(text):
            if family.name == "okx_loan_api_requests":
                for sample in family.samples:
                    if sample.name.endswith("_total") and sample.labels["endpoint"] == "loan_info":
                        requests[sample.labels["account"]] = sample.value
        exported.append(requests)
    names = [account.name for account in accounts]
    for index, requests in enumerate(exported):
        assert sorted(requests) == sorted(n for n in names if shard_of(n, 3) == index)
    union = [name for requests in exported for name in requests]
    assert sorted(union) == sorted(names)  # every account, none twice
    seen = simulator.stats()["accounts"]
    for requests in exported:
        for name, count in requests.items():
            assert count >= 1
            assert seen[name]["requests"] == count, name  # no other process asked for it


def test_a_reload_keeps_to_the_shard(tmp_path):
    """SIGHUP or POST /-/reload reads the whole config again: the exporter still takes only its
    shard's accounts, the new ones included."""
    from okx_loan_exporter.config import load_config
    from okx_loan_exporter.exporter import Exporter
    from okx_loan_exporter.reload import Reloader
    from okx_loan_exporter.sharding import select_shard
    from okx_loan_exporter.webconfig import WebConfigWatcher

    config_path, _ = write_config(tmp_path, count=6)
    shard = Shard(1, 3)
    exporter = Exporter(select_shard(load_config(config_path), shard))
    try:
        before = [account.name for account in exporter.config.accounts]
        assert before == [f"acct-{i:04d}" for i in range(1, 7) if shard_of(f"acct-{i:04d}", 3) == 1]
        write_config(tmp_path, count=15)
        Reloader(exporter, WebConfigWatcher(None), config_path, shard=shard).reload()
        after = [cache.name for cache in exporter.cache.accounts]
    finally:
        exporter.close()
    assert after == [n for n in NAMES[:15] if shard_of(n, 3) == 1]
    assert set(before) < set(after)
