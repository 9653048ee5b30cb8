"""The docs quote the code: the stage tables and the refusal replies they show must be the code's.

Found by a docs review after a day of parallel commits: the README's stage table still had the
automatic-mail and rate-limit checks before framing and no record-receipt, and docs/content.md had
extract-content before screen-attachments.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from gateway.cli import build_parser
from gateway.odoorights import KNOWN
from gateway.pipeline import STAGES
from gateway.refusals import all_refusal_classes
from gateway.smtp import AUTH_NOT_IMPLEMENTED, STARTTLS_REQUIRED

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
STAGE_NAMES = [stage.name for stage in STAGES]

# Replies the gateway quotes that are aiosmtpd's own, or the listener's answers to SMTP commands
# (gateway/smtp.py), not a Refusal class.
AIOSMTPD_REPLIES = {
    (421, "4.7.0"): ("NOOP sent too many times", "MAIL sent too many times"),
    (553, "5.1.3"): ("Error: malformed address",),
    (503, "5.5.1"): ("TLS already active",),
    (502, "5.5.1"): ("Too many unrecognized commands, goodbye.",),
}
for _reply in (STARTTLS_REQUIRED, AUTH_NOT_IMPLEMENTED):
    _code, _enhanced, _text = _reply.split(" ", 2)
    AIOSMTPD_REPLIES[int(_code), _enhanced] = (*AIOSMTPD_REPLIES.get((int(_code), _enhanced), ()), _text)


def _table_stages(text: str, heading: str) -> list[str]:
    """The stage names of the first column of the first table after ``heading``, in order."""
    section = text[text.index(heading):]
    rows = re.search(r"^\| stage \|.*?\n\|[-| ]+\|\n((?:\|.*\n)+)", section, re.M).group(1)
    names: list[str] = []
    for row in rows.splitlines():
        first = row.split("|")[1].strip()
        if first.startswith("("):  # "(RCPT)": not a stage of the pipeline
            continue
        names += [name.strip().strip("`") for name in first.split(",")]
    return names


def test_readme_stage_table_is_the_pipeline_in_order():
    assert _table_stages((ROOT / "README.md").read_text(), "## How it works") == STAGE_NAMES


def test_content_stage_table_follows_the_pipeline_order():
    names = _table_stages((ROOT / "docs/content.md").read_text(), "# What a filed note holds")
    assert set(names) <= set(STAGE_NAMES)
    assert names == sorted(names, key=STAGE_NAMES.index)


def _quoted_replies():
    for path in DOCS:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for quoted in re.findall(r"`(?:REFUSED )?([45]\d\d) ([45]\.\d{1,3}\.\d{1,3}) ([^`]+)`", line):
                yield pytest.param(*quoted, id=f"{path.name}:{number}")


@pytest.mark.parametrize(("code", "enhanced", "text"), list(_quoted_replies()))
def test_quoted_refusal_replies_are_the_code_s(code, enhanced, text):
    if text.startswith("..."):  # only the detail is quoted
        return
    said = text.split(" ...")[0]
    # "Too many messages from this sender / to this record": two replies quoted as one.
    said = said.split(" / ")[0]
    reasons = [refusal.reason for refusal in all_refusal_classes()
               if (refusal.smtp_code, refusal.enhanced_code) == (int(code), enhanced)]
    reasons += AIOSMTPD_REPLIES.get((int(code), enhanced), ())
    assert reasons, f"no refusal replies {code} {enhanced}"
    assert any(reason.startswith(said) or said.startswith(reason) for reason in reasons), \
        f"{code} {enhanced} {text!r} is none of {reasons}"


def _decision_examples():
    for path in DOCS:
        for block in re.findall(r"^stages:\n((?:  \S+ +[0-9.]+ ms\n)+)", path.read_text(), re.M):
            yield pytest.param([line.split()[0] for line in block.splitlines()], id=path.name)


@pytest.mark.parametrize("stages", list(_decision_examples()))
def test_log_id_examples_list_the_stages_that_run(stages):
    # Every stage runs until one refuses: the list is always the first stages of STAGES.
    assert stages == STAGE_NAMES[:len(stages)]


def _subcommand_options() -> dict[str, set[str]]:
    parser = build_parser()
    common = set(parser._option_string_actions)
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return {name: common | set(sub._option_string_actions) for name, sub in commands.choices.items()}


def _documented_commands():
    for path in [*DOCS, ROOT / "gateway.example.toml", ROOT / "rules/example.toml"]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for command, rest in re.findall(r"note-gateway ([a-z][a-z-]+)((?: +(?:--?[a-z][a-z-]*|[^\s`|-]\S*))*)", line):
                options = re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", rest)
                yield pytest.param(command, options, id=f"{path.name}:{number}:{command}")


@pytest.mark.parametrize(("command", "options"), list(_documented_commands()))
def test_documented_commands_and_options_exist(command, options):
    known = _subcommand_options()
    if command not in known:  # "note-gateway holds ...": prose, not a command line
        assert not options, f"note-gateway has no command {command!r}"
        return
    assert set(options) <= known[command], f"note-gateway {command}: not in --help: {set(options) - known[command]}"


def test_readme_names_every_log_filter():
    # The README's journal section lists the filters of "note-gateway log" (found naming 3 of 5).
    section = (ROOT / "README.md").read_text().split("## The journal", 1)[1].split("\n## ", 1)[0]
    for option in ("--verdict", "--sender", "--record", "--domain", "--odoo", "--message-id", "--since", "--limit",
                   "--id"):
        assert option in _subcommand_options()["log"]
        assert f"`{option}" in section


def test_the_json_log_line_example_has_the_fields_and_stages_serve_writes():
    # A docs review found the example line in docs/operations.md without odoo_identity and with only
    # the stages of an older pipeline.
    import dataclasses
    import json

    from gateway.journal import JournalEntry

    text = (ROOT / "docs" / "operations.md").read_text()
    [line] = re.findall(r'^\{"event": "message", .*\}$', text, re.M)
    example = json.loads(line)
    # The entry's own row id is written as journal_id.
    assert set(example) == {"event", "journal_id"} | {field.name for field in dataclasses.fields(JournalEntry)} - {"id"}
    assert list(example["durations"]) == STAGE_NAMES[:len(example["durations"])]


def _example_comment(key: str) -> str:
    """The comment of ``key`` in gateway.example.toml: its line's and the indented ones under it, as one line."""
    lines = (ROOT / "gateway.example.toml").read_text().splitlines()
    start = next(number for number, line in enumerate(lines) if line.startswith(f"{key} ="))
    parts = [lines[start].split("#", 1)[1]]
    for line in lines[start + 1:]:
        if not re.match(r"^ +#", line):
            break
        parts.append(line.split("#", 1)[1])
    return " ".join(" ".join(parts).split())


def _prose(path: Path) -> str:
    return " ".join(path.read_text().split())


def test_max_sessions_per_ip_comment_names_the_limit_the_docs_name():
    # A review found the sample config telling to keep max_sessions_per_ip at or above Postfix's
    # "lmtp/smtp destination concurrency limit", while the docs say it is the process limit of the
    # Postfix service that connects (with a recipient limit of 1, the destination concurrency
    # limit does not bound the deliveries; docs/operations.md).
    docs_say = "`listener.max_sessions_per_ip` at or above the process limit of the proxied smtpd"
    assert docs_say in _prose(ROOT / "docs" / "reliability.md")
    assert "the transport's process limit allows: that limit (20 in `master.cf`) must be at most `[listener] " \
        "max_sessions_per_ip`" in _prose(ROOT / "docs" / "operations.md")
    comment = _example_comment("max_sessions_per_ip")
    assert "at or above the process limit of the Postfix service that connects" in comment
    assert "proxied smtpd" in comment and "notegw transport" in comment
    assert "at or above its lmtp/smtp destination concurrency limit" not in comment


def test_unknown_commands_are_said_to_end_the_session_at_the_fifth_not_at_command_call_limit():
    # A review found the sample config, the config's comment and docs/reliability.md counting
    # unknown commands under command_call_limit (20), when aiosmtpd's fixed limit of five ends the
    # session first (tests/test_abuse.py shows it over SMTP), as docs/operations.md said.
    from aiosmtpd.smtp import BOGUS_LIMIT

    assert BOGUS_LIMIT == 5
    comment = _example_comment("command_call_limit")
    assert "unknown" not in comment.split(";")[0]
    assert "Unknown commands have aiosmtpd's fixed limit: the fifth gets 502 5.5.1" in comment
    lines = (ROOT / "gateway" / "config.py").read_text().split("    command_call_limit: Annotated")[0].splitlines()
    above: list[str] = []
    while lines[-1].strip().startswith("#"):
        above.insert(0, lines.pop().strip().lstrip("#"))
    config_comment = " ".join(" ".join(above).split())
    assert config_comment.startswith("aiosmtpd's command_call_limit")
    assert "unknown ones" not in config_comment
    assert "the fifth in a session gets \"502 5.5.1 Too many unrecognized commands, goodbye.\"" in config_comment
    reliability = (ROOT / "docs" / "reliability.md").read_text()
    [row] = [line for line in reliability.splitlines() if "more than `listener.command_call_limit` times" in line]
    assert "unknown" not in row
    assert "| A fifth unknown command in one session" in reliability


def test_the_expiry_warnings_of_certificate_and_api_keys_are_the_days_the_docs_say():
    # doctor.py and checks.py had a 21 each (CERTIFICATE_WARNING_DAYS, API_KEY_WARNING_DAYS) for
    # the one promise of docs/operations.md: now one constant, which the docs must quote.
    from gateway import checks

    text = _prose(ROOT / "docs" / "operations.md")
    assert (f"certificate and the integration user's API keys get a warning {checks.EXPIRY_WARNING_DAYS} days "
            "before they expire") in text
    assert f"`check-config --online` warn {checks.EXPIRY_WARNING_DAYS} days ahead" in text


def test_the_rights_table_of_the_odoo_side_names_the_groups_of_the_hints():
    # Onboarding review: the docs and every hint named "Sales / User: All Documents" (and "Project /
    # User" for tasks) whatever the model. The table in docs/operations.md and the one the hints
    # use (gateway/odoorights.py) must name the same group for each model.
    section = (ROOT / "docs/operations.md").read_text().split("## The Odoo side", 1)[1]
    rows = {row.split("|")[1].strip().strip("`"): row for row in re.findall(r"^  \| `[a-z_.]+` \|.*$", section, re.M)}
    assert set(rows) == set(KNOWN)
    for model, rights in KNOWN.items():
        group = rights.write or rights.read.split(";")[0]
        assert f'"{group}"' in rows[model], (model, group)
