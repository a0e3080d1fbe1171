"""load_settings: what it accepts, how it normalises, and the one line it fails with."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.servers import run_cli
from webhook_service.config import ConfigError, Settings, load_settings, redact_url

SECRET_A = "whsec_config_test_aaaaaaaaaaaaaaaaaaaaaa"
SECRET_B = "whsec_config_test_bbbbbbbbbbbbbbbbbbbbbb"


def test_defaults() -> None:
    """Start from an empty environment with the documented defaults."""
    settings = load_settings({})
    assert settings.webhook_secrets == ()
    assert settings.webhook_tolerance == 300
    assert settings.database_url == "sqlite:///var/webhook-service.db"
    assert settings.rate_limit == "120/minute"
    assert settings.ratelimit_storage_uri == "memory://"
    assert settings.max_webhook_bytes == 1_048_576
    assert settings.trusted_proxy_hops == 0
    assert (settings.log_format, settings.log_level) == ("json", "info")
    assert settings.port == 8080
    assert settings.web_concurrency >= 2
    assert settings.catalog.default_plan.name == "free"


def test_comma_separated_secrets_with_spaces() -> None:
    """Split STRIPE_WEBHOOK_SECRET on commas, trimming spaces and empty items, in order."""
    settings = load_settings({"STRIPE_WEBHOOK_SECRET": f"  {SECRET_A} ,, {SECRET_B},  "})
    assert settings.webhook_secrets == (SECRET_A, SECRET_B)


def test_secret_not_starting_with_whsec_is_refused_without_showing_it() -> None:
    """Refuse a secret that is not a whsec_ secret, naming its position, not its value."""
    with pytest.raises(ConfigError) as caught:
        load_settings({"STRIPE_WEBHOOK_SECRET": f"{SECRET_A},sk_live_notawebhooksecret"})
    message = str(caught.value)
    assert "STRIPE_WEBHOOK_SECRET" in message
    assert "#1" in message
    assert "sk_live_notawebhooksecret" not in message
    assert SECRET_A not in message


@pytest.mark.parametrize("value", ["0", "-1", "-300"])
def test_tolerance_must_be_positive(value: str) -> None:
    """Refuse a tolerance of zero or less."""
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_TOLERANCE") as caught:
        load_settings({"STRIPE_WEBHOOK_TOLERANCE": value})
    assert "positive" in str(caught.value)


@pytest.mark.parametrize("value", ["5m", "1.5", "three hundred", "300s"])
def test_tolerance_must_be_an_integer(value: str) -> None:
    """Refuse a tolerance that is not a whole number of seconds."""
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_TOLERANCE") as caught:
        load_settings({"STRIPE_WEBHOOK_TOLERANCE": value})
    assert repr(value) in str(caught.value)


def test_tolerance_is_read() -> None:
    """Use the configured tolerance, spaces trimmed."""
    assert load_settings({"STRIPE_WEBHOOK_TOLERANCE": " 60 "}).webhook_tolerance == 60


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        ("postgres://u:p@db.internal:5432/nat", "postgresql+psycopg://u:p@db.internal:5432/nat"),
        ("postgresql://u@db/nat?sslmode=require", "postgresql+psycopg://u@db/nat?sslmode=require"),
        ("postgresql+psycopg://u@db/nat", "postgresql+psycopg://u@db/nat"),
        ("  sqlite:////data/nat.db  ", "sqlite:////data/nat.db"),
    ],
)
def test_database_url_is_normalised(raw: str, normalised: str) -> None:
    """Accept postgres:// and postgresql:// and use the psycopg 3 driver for them."""
    assert load_settings({"DATABASE_URL": raw}).database_url == normalised


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("nonsense", "not a valid database URL"),
        ("mysql://u@db/nat", "'mysql'"),
        ("postgresql+psycopg2://u@db/nat", "psycopg"),
    ],
)
def test_unusable_database_url_is_refused(raw: str, fragment: str) -> None:
    """Refuse a URL that is unparseable, of another database, or of another driver."""
    with pytest.raises(ConfigError, match="DATABASE_URL") as caught:
        load_settings({"DATABASE_URL": raw})
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "value", ["120/minute", "10 per second", "1000/hour", "5/2 minutes", "100 per day"]
)
def test_rate_limit_formats_are_accepted(value: str) -> None:
    """Accept the rate limit notations the limits library understands."""
    assert load_settings({"RATE_LIMIT": value}).rate_limit == value


@pytest.mark.parametrize("value", ["120", "fast", "120/fortnight", "/minute", "120 per"])
def test_bad_rate_limit_is_refused(value: str) -> None:
    """Refuse a RATE_LIMIT that is not N/period."""
    with pytest.raises(ConfigError, match="RATE_LIMIT"):
        load_settings({"RATE_LIMIT": value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_WEBHOOK_BYTES", "lots"),
        ("MAX_WEBHOOK_BYTES", "10"),
        ("PORT", "http"),
        ("PORT", "0"),
        ("WEB_CONCURRENCY", "0"),
        ("TRUSTED_PROXY_HOPS", "-1"),
        ("LOG_FORMAT", "xml"),
        ("LOG_LEVEL", "verbose"),
        ("RATELIMIT_STORAGE_URI", "memcached://localhost"),
        ("STRIPE_API_BASE", "ftp://stripe.example"),
    ],
)
def test_other_bad_values_name_their_variable(name: str, value: str) -> None:
    """Refuse a bad value with one line naming the variable."""
    with pytest.raises(ConfigError) as caught:
        load_settings({name: value})
    assert str(caught.value).startswith(name)
    assert "\n" not in str(caught.value)


def test_plans_file_is_loaded(tmp_path: Path) -> None:
    """Use the catalog of NAT_PLANS_FILE."""
    path = tmp_path / "plans.toml"
    path.write_text(
        'default_plan = "starter"\n[plans.starter]\nscans_per_month = 3\n'
        '[plans.max]\nscans_per_month = 9000\nprices = ["price_max"]\n',
        encoding="utf-8",
    )
    settings = load_settings({"NAT_PLANS_FILE": str(path)})
    assert settings.plans_file == str(path)
    assert settings.catalog.default_plan.name == "starter"
    plan = settings.catalog.plan_for_price("price_max")
    assert plan is not None
    assert plan.scans_per_month == 9000


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "cannot read"),
        ("default_plan = ", "not valid TOML"),
        ('default_plan = "free"\n', "[plans.NAME]"),
        ('default_plan = "gold"\n[plans.free]\nscans_per_month = 1\n', "'gold'"),
        ('default_plan = "free"\n[plans.free]\nscans_per_month = -1\n', "non-negative"),
    ],
)
def test_bad_plans_file_is_refused(tmp_path: Path, content: str | None, fragment: str) -> None:
    """Refuse a plan file that is missing, not TOML or not a catalog, in one line."""
    path = tmp_path / "plans.toml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings({"NAT_PLANS_FILE": str(path)})
    message = str(caught.value)
    assert message.startswith("NAT_PLANS_FILE")
    assert fragment in message
    assert "\n" not in message


def test_repr_never_shows_secrets() -> None:
    """Show no webhook secret, sync key, API key or database password in repr/str."""
    settings = load_settings(
        {
            "STRIPE_WEBHOOK_SECRET": f"{SECRET_A},{SECRET_B}",
            "NAT_APP_SYNC_KEY": "sync_key_value_never_shown",
            "STRIPE_API_KEY": "sk_test_api_key_never_shown",
            "DATABASE_URL": "postgres://nat:db_password_never_shown@db/nat"
            "?password=query_password_never_shown",
        }
    )
    for text in (repr(settings), str(settings), f"{settings}", repr([settings])):
        for secret in (
            SECRET_A,
            SECRET_B,
            "whsec_",
            "sync_key_value_never_shown",
            "sk_test_api_key_never_shown",
            "db_password_never_shown",
            "query_password_never_shown",
        ):
            assert secret not in text
    assert "webhook_secrets=2" in repr(settings)
    assert "sync_key=set" in repr(settings)
    assert "stripe_api_key=set" in repr(settings)
    assert "db/nat" in repr(settings)


def test_repr_of_default_settings() -> None:
    """Say what is unset."""
    text = repr(Settings())
    assert "webhook_secrets=0" in text
    assert "sync_key=unset" in text


def test_redact_url_hides_passwords() -> None:
    """Render a database URL without its password, wherever libpq would take it from."""
    assert redact_url("postgresql+psycopg://u:pw@h/db") == "postgresql+psycopg://u:***@h/db"
    hidden = redact_url("postgresql+psycopg://u@h/db?PASSWORD=pw&sslmode=require")
    assert "pw" not in hidden.replace("psycopg", "")
    assert "sslmode=require" in hidden
    assert redact_url("nonsense") == "<unparseable>"


def test_sqlite_path_under_a_file_is_a_one_line_configuration_error(tmp_path: Path) -> None:
    """12.9: a SQLite path under a regular file stops start-up with one clear line."""
    regular = tmp_path / "a-file"
    regular.write_text("not a directory", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": f"sqlite:///{regular}/sub/x.db"})
    message = str(caught.value)
    assert message == (
        f"DATABASE_URL: the SQLite file's directory cannot be created: {regular} is not a directory"
    )
    result = run_cli("db", "upgrade", env={"DATABASE_URL": f"sqlite:///{regular}/x.db"})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"configuration error: {message}"]
