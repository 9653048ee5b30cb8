"""Configuration loading: the shipped examples load, and each kind of mistake names file, key and reason."""

import shutil
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent

GATEWAY = """
rules_dir = "rules"
[odoo.main]
url = "http://127.0.0.1:8069"
database = "notes"
login = "gateway"
api_key_file = "key"
"""

RULES = """
domain = "notes.example.com"
odoo = "main"
secrets = ["0123456789abcdef-secret"]
[note]
models = ["project.task"]
"""


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "rules").mkdir()
    (tmp_path / "key").write_text("api-key\n")
    (tmp_path / "gateway.toml").write_text(GATEWAY)
    (tmp_path / "rules" / "notes.toml").write_text(RULES)
    return tmp_path


def test_shipped_example_files_load(tmp_path):
    shutil.copy(ROOT / "gateway.example.toml", tmp_path / "gateway.toml")
    shutil.copytree(ROOT / "rules", tmp_path / "rules")
    (tmp_path / "odoo-api-key").write_text("k")
    config = load_config(tmp_path / "gateway.toml")
    assert "notes.example.com" in config.domains
    assert config.secrets["notes.example.com"][0].startswith(b"example-secret")
    assert config.domains["notes.example.com"].note.models == ["project.task", "sale.order"]


def test_minimal_config_has_sensible_defaults(folder):
    config = load_config(folder / "gateway.toml")
    assert config.api_keys == {"main": "api-key"}
    assert config.gateway.listener.max_sessions == 100
    assert config.domains["notes.example.com"].reply.models == []  # opt-in
    assert config.journal_path == folder / "journal.sqlite3"


def _error(folder, gateway=None, rules=None, environ=None) -> ConfigError:
    if gateway is not None:
        (folder / "gateway.toml").write_text(gateway)
    if rules is not None:
        (folder / "rules" / "notes.toml").write_text(rules)
    with pytest.raises(ConfigError) as caught:
        load_config(folder / "gateway.toml", environ=environ or {})
    return caught.value


def test_unknown_key_is_named(folder):
    error = _error(folder, rules=RULES + "model = []\n")  # lands in [note]: a typo of "models"
    assert error.key == "note.model" and "unknown key" in error.reason
    assert error.path.endswith("notes.toml")


def test_bad_type_is_named(folder):
    error = _error(folder, gateway=GATEWAY + "[listener]\nport = 'smtp'\n")
    assert error.key == "listener.port" and error.path.endswith("gateway.toml")


def test_missing_secret(folder):
    error = _error(folder, rules=RULES.replace('secrets = ["0123456789abcdef-secret"]', ""))
    assert error.key == "secrets"


def test_short_secret(folder):
    error = _error(folder, rules=RULES.replace("0123456789abcdef-secret", "short"))
    assert "16 characters" in error.reason


def test_unknown_odoo_connection(folder):
    error = _error(folder, rules=RULES.replace('odoo = "main"', 'odoo = "other"'))
    assert error.key == "odoo" and "odoo.other" in error.reason


def test_duplicate_domain(folder):
    (folder / "rules" / "again.toml").write_text(RULES)
    error = _error(folder)
    assert error.key == "domain" and "already configured" in error.reason


def test_api_key_from_unset_environment_variable(folder):
    error = _error(folder, gateway=GATEWAY.replace('api_key_file = "key"', 'api_key_env = "GW_KEY"'))
    assert error.key == "odoo.main.api_key_env"
    config = load_config(folder / "gateway.toml", environ={"GW_KEY": "from-env"})
    assert config.api_keys["main"] == "from-env"


def test_bad_group_xmlid_and_bad_toml(folder):
    assert _error(folder, rules=RULES + 'contributor_group = "nodot"\n').key == "note.contributor_group"
    assert "not valid TOML" in _error(folder, rules="domain = ").reason


def test_no_rules_file(folder):
    (folder / "rules" / "notes.toml").unlink()
    assert "no rules file" in _error(folder).reason


def test_attachment_rules_and_domain_templates(folder):
    (folder / "rules" / "notes-templates").mkdir()
    (folder / "rules" / "notes.toml").write_text(
        RULES + 'notify_recipients = false\n[attachments]\nmax_file_size = 1024\non_refused_file = "refuse"\n'
        + 'denied_extensions = ["EXE"]\n')
    text = (folder / "rules" / "notes.toml").read_text()
    (folder / "rules" / "notes.toml").write_text('templates_dir = "notes-templates"\n' + text)
    rules = load_config(folder / "gateway.toml", environ={}).domains["notes.example.com"]
    assert rules.attachments.max_file_size == 1024 and rules.attachments.on_refused_file == "refuse"
    assert rules.attachments.denied_extensions == [".exe"] and rules.note.notify_recipients is False
    assert rules.templates_path == folder / "rules" / "notes-templates"


def test_bad_attachment_rules_and_missing_templates_folder_are_named(folder):
    error = _error(folder, rules=RULES + '[attachments]\non_refused_file = "bounce"\n')
    assert error.key == "attachments.on_refused_file"
    error = _error(folder, rules='templates_dir = "nowhere"\n' + RULES)
    assert error.key == "templates_dir" and "is not a folder" in error.reason


@pytest.mark.parametrize("extra, key, reason", [
    ('[reply]\naccess = "everyone"\n', "reply.access", "Input should be"),
    ('[reply]\naccess = "email-domain"\n', "reply.access", "email_domains"),
    ('[reply]\npartner_field = "partner_id; drop"\n', "reply.partner_field", "field name"),
    ('email_domains = { "Example.com" = 0 }\n', "email_domains.Example.com", "greater than or equal to 1"),
    ("company_id = 1\ncompany_from_alias_domain = true\n", "company_from_alias_domain", "not both"),
    ("rules_cache_seconds = -1\n", "rules_cache_seconds", "greater than or equal to 0"),
])
def test_access_policy_mistakes_are_named(folder, extra, key, reason):
    # Keys of the top level go before the first table.
    rules = extra + RULES if not extra.startswith("[") else RULES.replace("[note]", extra + "[note]")
    error = _error(folder, rules=rules)
    assert (error.key, error.path.endswith("notes.toml")) == (key, True)
    assert reason in error.reason


def test_access_defaults(folder):
    rules = load_config(folder / "gateway.toml").domains["notes.example.com"]
    assert rules.note.access == rules.reply.access == "odoo-rules"
    assert rules.note.partner_field == "partner_id"
    assert (rules.company_id, rules.company_from_alias_domain, rules.email_domains) == (None, False, {})
    assert rules.rules_cache_seconds == 60 and rules.address_max_age_days == 0


def test_world_readable_key_and_secrets_are_warned_about(folder):
    (folder / "key").chmod(0o644)
    (folder / "rules" / "notes.toml").chmod(0o644)
    warnings = load_config(folder / "gateway.toml").warnings
    assert any("odoo.main.api_key_file" in w and "every local user" in w for w in warnings)
    assert any("notes.toml: secrets:" in w for w in warnings)
    (folder / "key").chmod(0o600)
    (folder / "rules" / "notes.toml").chmod(0o600)
    assert load_config(folder / "gateway.toml").warnings == []


def test_example_rules_file_documents_every_key():
    from pydantic import BaseModel

    from gateway.config import DomainRules, NoteRules

    text = (ROOT / "rules" / "example.toml").read_text()
    # Every table of a rules file ([note], [attachments], ...) and every key in it or at the top.
    tables = {name: field.annotation for name, field in DomainRules.model_fields.items()
              if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)}
    tables["note"] = NoteRules
    keys = set(DomainRules.model_fields) - set(tables) - {"source"}
    for model in tables.values():
        keys |= set(model.model_fields)
    missing = sorted(key for key in keys if f"{key} =" not in text)
    missing += sorted(f"[{table}]" for table in tables if f"[{table}]" not in text)
    assert missing == []
