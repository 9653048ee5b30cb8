"""The configuration keys of issue 4: documented defaults in the examples, mistakes named by key."""

import shutil
from pathlib import Path

import pytest

from gateway.config import ConfigError, GatewayFile, load_config
from gateway.testing.configs import fresh_secret

ROOT = Path(__file__).resolve().parent.parent


def _examples(tmp_path: Path, rules_extra: str = "", gateway_extra: str = "") -> Path:
    (tmp_path / "gateway.toml").write_text((ROOT / "gateway.example.toml").read_text() + gateway_extra)
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    # A site's own secret: the published example one is refused (operator review).
    (tmp_path / "rules" / "example.secrets").write_text(fresh_secret() + "\n")
    rules = tmp_path / "rules" / "example.toml"
    rules.write_text(rules.read_text() + rules_extra)
    (tmp_path / "odoo-api-key").write_text("k")
    return tmp_path / "gateway.toml"


def test_examples_state_the_defaults(tmp_path):
    config = load_config(_examples(tmp_path))
    defaults = GatewayFile(odoo={})
    gateway = config.gateway
    assert gateway.limits == defaults.limits and gateway.notices == defaults.notices
    assert (gateway.listener.max_sessions_per_ip, gateway.listener.shutdown_grace) == (20, 30)
    listener, default_listener = gateway.listener, defaults.listener
    assert ((listener.command_call_limit, listener.transaction_call_limit, listener.max_session_seconds)
            == (default_listener.command_call_limit, default_listener.transaction_call_limit,
                default_listener.max_session_seconds) == (20, 10000, 600))
    rules = config.domains["notes.example.com"]
    assert (rules.rate_limit.per_sender, rules.rate_limit.per_record, rules.rate_limit.window_minutes) == (20, 20, 120)
    assert rules.notices.enabled is False


@pytest.mark.parametrize("rules_extra, key", [
    ("per_sendr = 3\n", "rate_limit.per_sendr"),
    ("per_sender = -1\n", "rate_limit.per_sender"),
])
def test_rate_limit_mistakes_name_the_key(tmp_path, rules_extra, key):
    path = _examples(tmp_path)
    rules = tmp_path / "rules" / "example.toml"
    rules.write_text(rules.read_text().replace("per_sender = 20\n", rules_extra))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.key == key and error.value.path == str(rules)


def test_deadline_over_five_minutes_is_refused(tmp_path):
    path = _examples(tmp_path)
    path.write_text(path.read_text().replace("message_deadline = 120", "message_deadline = 600"))
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.key == "listener.message_deadline"


@pytest.mark.parametrize("line, key", [
    ("command_call_limit = 0", "listener.command_call_limit"),
    ("transaction_call_limit = -1", "listener.transaction_call_limit"),
    ("max_session_seconds = 0", "listener.max_session_seconds"),
    ("max_session_seconds = 'long'", "listener.max_session_seconds"),
])
def test_session_limit_mistakes_name_the_key(tmp_path, line, key):
    path = _examples(tmp_path)
    name = line.split(" =")[0]
    text = path.read_text()
    start = text.index(f"\n{name} = ") + 1
    path.write_text(text[:start] + line + text[text.index("  ", start):])
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert error.value.key == key and error.value.path == str(path)
