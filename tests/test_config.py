from __future__ import annotations

import pytest

from pingforward.config import LogFormat, Settings
from pingforward.errors import ConfigError
from pingforward.net.policy import DEFAULT_PORTS


def test_defaults() -> None:
    settings = Settings.from_environ({"PATH": "/usr/bin", "PORT": "5000"})
    assert settings == Settings()
    assert (settings.timeout, settings.max_body, settings.allowed_ports) == (10.0, 65536, DEFAULT_PORTS)
    assert settings.allow_private_networks is False


def test_values() -> None:
    settings = Settings.from_environ(
        {
            "PINGFORWARD_TIMEOUT": "2.5",
            "PINGFORWARD_MAX_BODY": "4096",
            "PINGFORWARD_ALLOWED_HOSTS": "Site.example., *.blog.example",
            "PINGFORWARD_ALLOWED_PORTS": "443, 8443",
            "PINGFORWARD_ALLOW_PRIVATE_NETWORKS": "true",
            "PINGFORWARD_MAX_PER_HOST": "3",
        }
    )
    assert settings == Settings(
        timeout=2.5,
        max_body=4096,
        allowed_hosts=frozenset({"site.example", "*.blog.example"}),
        allowed_ports=frozenset({443, 8443}),
        allow_private_networks=True,
        max_per_host=3,
    )
    assert Settings.from_environ({"PINGFORWARD_ALLOWED_PORTS": "*"}).allowed_ports is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PINGFORWARD_TIMEOUT", "ten"),
        ("PINGFORWARD_TIMEOUT", "0"),
        ("PINGFORWARD_TIMEOUT", "-1"),
        ("PINGFORWARD_TIMEOUT", "nan"),
        ("PINGFORWARD_TIMEOUT", "inf"),
        ("PINGFORWARD_MAX_BODY", "64k"),
        ("PINGFORWARD_MAX_BODY", "10"),
        ("PINGFORWARD_ALLOWED_PORTS", "80,http"),
        ("PINGFORWARD_ALLOWED_PORTS", "0"),
        ("PINGFORWARD_ALLOWED_PORTS", ","),
        ("PINGFORWARD_ALLOWED_HOSTS", "https://site.example/"),
        ("PINGFORWARD_ALLOWED_HOSTS", "*"),
        ("PINGFORWARD_ALLOW_PRIVATE_NETWORKS", "maybe"),
        ("PINGFORWARD_MAX_PER_HOST", "0"),
        ("PINGFORWARD_TIMEOUTS", "10"),  # a typo must not be ignored silently
        ("PINGFORWARD_SPAM_CHECKS", "sometimes"),
        ("PINGFORWARD_VERIFY_SOURCE", "maybe"),
        ("PINGFORWARD_COPY_SHARE", "0"),
        ("PINGFORWARD_COPY_SHARE", "1.5"),
        ("PINGFORWARD_COPY_SHARE", "nan"),
        ("PINGFORWARD_COPY_SHARE", "half"),
        ("PINGFORWARD_VERIFY_TIMEOUT", "0"),
        ("PINGFORWARD_VERIFY_TIMEOUT", "nan"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        Settings.from_environ({name: value})


def test_app_refuses_to_start_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from pingforward.app import create_app

    monkeypatch.setenv("PINGFORWARD_MAX_BODY", "lots")
    with pytest.raises(SystemExit, match="^pingforward: bad configuration: PINGFORWARD_MAX_BODY: "):
        create_app()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("text", LogFormat.TEXT), ("json", LogFormat.JSON), (" JSON ", LogFormat.JSON), ("Text", LogFormat.TEXT)],
)
def test_log_format(raw: str, expected: LogFormat) -> None:
    assert Settings.from_environ({"PINGFORWARD_LOG_FORMAT": raw}).log_format is expected


def test_log_format_default() -> None:
    assert Settings.from_environ({}).log_format is LogFormat.TEXT


@pytest.mark.parametrize("raw", ["", "xml", "logfmt", "jsonl"])
def test_log_format_refused(raw: str) -> None:
    with pytest.raises(ConfigError, match=r"^PINGFORWARD_LOG_FORMAT: must be text or json, got "):
        Settings.from_environ({"PINGFORWARD_LOG_FORMAT": raw})


def test_windows() -> None:
    settings = Settings.from_environ(
        {
            "PINGFORWARD_REPEAT_WINDOW": "120",
            "PINGFORWARD_FLOOD_CLIENT": "10 per second; 100/hour",
            "PINGFORWARD_FLOOD_SOURCE": "OFF",
            "PINGFORWARD_FETCH_BOUND": "5/minute",
            "PINGFORWARD_STATE_URL": "rediss://:secret@redis.example:6380/1",
        }
    )
    assert (settings.repeat_window, settings.flood_client, settings.flood_source, settings.fetch_bound) == (
        120,
        "10 per second; 100/hour",
        "off",
        "5/minute",
    )
    assert settings.state_url == "rediss://:secret@redis.example:6380/1"
    assert "secret" not in repr(settings)
    assert Settings.from_environ({"PINGFORWARD_REPEAT_WINDOW": "off"}).repeat_window == 0
    assert Settings().state_url is None


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PINGFORWARD_REPEAT_WINDOW", "ten minutes"),
        ("PINGFORWARD_REPEAT_WINDOW", "-1"),
        ("PINGFORWARD_REPEAT_WINDOW", "86401"),
        ("PINGFORWARD_FLOOD_CLIENT", "60"),
        ("PINGFORWARD_FLOOD_CLIENT", "0/minute"),
        ("PINGFORWARD_FLOOD_SOURCE", "60/fortnight"),
        ("PINGFORWARD_FETCH_BOUND", "lots"),
        ("PINGFORWARD_STATE_URL", "memcached://cache:11211"),
        ("PINGFORWARD_STATE_URL", "redis.example:6379"),
    ],
)
def test_bad_windows_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^{name}: "):
        Settings.from_environ({name: value})


def test_a_bad_state_url_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_environ({"PINGFORWARD_STATE_URL": "http://:hunter2@redis.example"})
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, Settings(spam_checks=True, verify_source=True, copy_share=0.5, verify_timeout=1.5)),
        ({"PINGFORWARD_SPAM_CHECKS": "off"}, Settings(spam_checks=False)),
        ({"PINGFORWARD_VERIFY_SOURCE": "off"}, Settings(verify_source=False)),
        ({"PINGFORWARD_COPY_SHARE": "off"}, Settings(copy_share=None)),
        ({"PINGFORWARD_COPY_SHARE": "0.8"}, Settings(copy_share=0.8)),
        ({"PINGFORWARD_COPY_SHARE": "80%"}, Settings(copy_share=0.8)),
        ({"PINGFORWARD_VERIFY_TIMEOUT": "2"}, Settings(verify_timeout=2.0)),
    ],
)
def test_spam_check_settings(environ: dict[str, str], expected: Settings) -> None:
    assert Settings.from_environ(environ) == expected
