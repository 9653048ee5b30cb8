"""`setup-odoo` and the default odoo-rules policy against a real Odoo 18, over SMTP with real DKIM."""

from __future__ import annotations

import contextlib
import io
import re
import tomllib
import uuid
from dataclasses import dataclass

import pytest

from gateway import access, cli, policy
from gateway.identity import UserRows, find_user
from gateway.odoo import SOLO
from gateway.setup_odoo import NOTE_GATEWAY_GROUP, READ_MODELS

from .conftest import ALIAS_DOMAIN, RealGateway, start_real_gateway, write_real_config
from .provision import (followers_of, messages_on, notifications_for_message, portal_session, QUIET,
                        real_odoo_or_skip)

real_odoo_or_skip()

pytestmark = pytest.mark.real_odoo

NOTE_TEXT = "Pressure test passed at 12 bar; the customer's discount is not agreed yet.\n"


@dataclass
class SetupRun:
    """The gateway file written without `access` keys, and what setup-odoo and check-config printed."""

    config: str
    group_existed: bool
    check_before: tuple[int, str]
    first: tuple[int, str]
    second: tuple[int, str]


def _run(*argv: str) -> tuple[int, str]:
    """gateway.cli.main with its standard output and error captured together."""
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        status = cli.main(list(argv))
    return status, captured.getvalue()


def _gateway_group(world) -> int | None:
    module, name = NOTE_GATEWAY_GROUP.split(".")
    rows = world.admin.env["ir.model.data"].search_read(
        [("module", "=", module), ("name", "=", name), ("model", "=", "res.groups")], ["res_id"])
    if rows and world.admin.env["res.groups"].search([("id", "=", rows[0]["res_id"])]):
        return rows[0]["res_id"]
    return None


def _undo(world, run: SetupRun) -> None:
    """Leave the database as it was: what the first setup-odoo run created is removed again."""
    admin = world.env.connect()
    created_access = [int(found) for found in re.findall(r"created read access on \S+ \(ir\.model\.access (\d+)\)",
                                                         run.first[1])]
    if created_access:
        admin.env["ir.model.access"].unlink(created_access)
    group = re.search(r"created group " + re.escape(NOTE_GATEWAY_GROUP) + r" \(id (\d+)\)", run.first[1])
    if group:
        group_id = int(group.group(1))
        data = admin.env["ir.model.data"].search([("model", "=", "res.groups"), ("res_id", "=", group_id)])
        if data:
            admin.env["ir.model.data"].unlink(data)
        admin.env["res.groups"].unlink([group_id])  # its memberships go with it
    elif f"added {world.integration.login}" in run.first[1]:
        group_id = _gateway_group(world)
        if group_id:
            admin.env["res.users"].write([world.integration.user_id], {"groups_id": [(3, group_id)]})


@pytest.fixture(scope="module")
def setup_run(world, tmp_path_factory, signing_dns):
    folder = tmp_path_factory.mktemp("odoo-rules")
    config = write_real_config(folder, world, signing_dns.port, access=None)
    group_existed = _gateway_group(world) is not None
    check_before = _run("check-config", "--online", "--config", str(config))
    admin = ("--admin-login", world.env.admin_login, "--admin-password", world.env.admin_password)
    first = _run("setup-odoo", "--config", str(config), *admin)
    run = SetupRun(str(config), group_existed, check_before, first, (0, ""))
    try:
        run.second = _run("setup-odoo", "--config", str(config), *admin)
        yield run
    finally:
        _undo(world, run)
    assert _gateway_group(world) is None or group_existed


@pytest.fixture(scope="module")
def rules_gateway(setup_run, world, signing_keys, signing_dns, tmp_path_factory):
    gateway = start_real_gateway(tmp_path_factory.mktemp("odoo-rules-gateway"), world, signing_keys,
                                 signing_dns.port, access=None)
    try:
        yield gateway
    finally:
        gateway.server.stop()
        gateway.services.close()


def _message_id(world) -> str:
    return f"<{uuid.uuid4().hex}.{world.tag}@{world.domain}>"


def _last_message_id(world, model: str, res_id: int) -> int:
    return max([m["id"] for m in messages_on(world, model, res_id)], default=0)


def _send_note(world, gateway: RealGateway, sender: str, model: str, res_id: int,
               message_id: str | None = None) -> str:
    to = gateway.address("note", model, res_id)
    raw = gateway.sign(gateway.message(sender, to, NOTE_TEXT, message_id=message_id))
    return gateway.send(raw, to, mail_from=sender)


def test_the_config_has_no_access_key_so_odoo_rules_applies(setup_run):
    rules_file = f"{setup_run.config.rsplit('/', 1)[0]}/rules/{ALIAS_DOMAIN}.toml"
    with open(rules_file, "rb") as handle:
        rules = tomllib.load(handle)
    assert "access" not in rules["note"] and "access" not in rules["reply"]
    status, output = _run("check-config", "--config", setup_run.config)
    assert status == 0 and "(odoo-rules)" in output, output


def test_before_setup_odoo_the_integration_user_cannot_read_the_rules(setup_run):
    if setup_run.group_existed:
        pytest.skip("note_gateway.group_note_gateway existed before this run: nothing to observe")
    status, output = setup_run.check_before
    assert status == 1, output
    assert "odoo-rules needs read access to ir.rule" in output and "run note-gateway setup-odoo" in output, output
    print(f"\ncheck-config --online before setup-odoo (exit {status}):\n{output}")


def test_setup_odoo_creates_the_gateway_group_and_adds_the_integration_user(setup_run, world):
    status, output = setup_run.first
    assert status == 0, output
    group_id = _gateway_group(world)
    assert group_id is not None
    verb = "found" if setup_run.group_existed else "created"
    assert f"{verb} group {NOTE_GATEWAY_GROUP} (id {group_id})" in output, output
    assert f"found group {world.group_xmlid} (id {world.group_id})" in output, output
    assert f"added {world.integration.login} (uid {world.integration.user_id}) to {NOTE_GATEWAY_GROUP}" in output
    # What Odoo holds now: read-only access lists for the group, the integration user in it.
    rows = world.admin.env["ir.model.access"].search_read(
        [("group_id", "=", group_id)], ["model_id", "perm_read", "perm_write", "perm_create", "perm_unlink"])
    models = {world.admin.env["ir.model"].read([row["model_id"][0]], ["model"])[0]["model"]: row for row in rows}
    # project.collaborator: what the portal task rule goes through (gateway/setup_odoo.py run).
    assert set(models) == set(READ_MODELS) | {"project.collaborator"}
    for row in models.values():
        assert (row["perm_read"], row["perm_write"], row["perm_create"], row["perm_unlink"]) == (True, False, False,
                                                                                               False)
    groups = world.admin.env["res.users"].read([world.integration.user_id], ["groups_id"])[0]["groups_id"]
    assert group_id in groups
    print(f"\nsetup-odoo, first run (exit {status}):\n{output}")


def test_setup_odoo_a_second_time_creates_nothing(setup_run, world):
    status, output = setup_run.second
    assert status == 0, output
    assert "created" not in output and "added" not in output and "reset" not in output, output
    assert f"found group {NOTE_GATEWAY_GROUP}" in output
    assert all(f"found read access on {model}" in output for model in READ_MODELS), output
    assert f"found {world.integration.login} in {NOTE_GATEWAY_GROUP}" in output
    print(f"\nsetup-odoo, second run (exit {status}):\n{output}")


def test_check_config_online_passes_after_setup_odoo(setup_run):
    status, output = _run("check-config", "--online", "--config", setup_run.config)
    assert status == 0, output
    assert "error:" not in output, output
    for model in ("project.task", "sale.order"):
        assert re.search(rf"{re.escape(model)}: \d+ read rules, \d+ evaluable", output), output
    print(f"\ncheck-config --online after setup-odoo (exit {status}):\n{output}")


def _file_contributor_note(world, gateway: RealGateway, message_id: str) -> tuple[str, int]:
    """The contributor's note on her task, which must be filed: the reply and the Odoo message id."""
    reply = _send_note(world, gateway, world.contributor.email, "project.task", world.task_id, message_id)
    assert reply.startswith("250 2.0.0 Filed as Odoo message "), reply
    return reply, int(reply.rsplit(" ", 1)[1])


def test_contributor_note_on_her_task_is_filed_and_invisible_from_the_portal(world, rules_gateway):
    task = world.task_id
    message_id = _message_id(world)
    reply, odoo_id = _file_contributor_note(world, rules_gateway, message_id)
    [stored] = [m for m in messages_on(world, "project.task", task) if m["id"] == odoo_id]
    note = world.admin.execute("ir.model.data", "check_object_reference", "mail", "mt_note")[1]
    assert stored["subtype_id"][0] == note and stored["message_id"] == message_id
    assert stored["author_id"][0] == world.contributor.partner_id
    assert notifications_for_message(world, odoo_id) == []
    assert followers_of(world, "project.task", task) == world.task_followers
    for user in (world.contributor, world.plain):
        session = portal_session(world, user.login, user.password)
        assert session.can_read("project.task", task)
        assert odoo_id not in session.chatter_ids("project.task", task)
    [row] = [row for row in rules_gateway.journal() if row.message_id == message_id]
    assert (row.verdict, row.odoo_message_id) == ("filed", odoo_id)
    print(f"\nodoo-rules, contributor on project.task {task}: {reply!r}; subtype {stored['subtype_id']}, "
          "0 notifications, not in either portal user's chatter")


def test_the_same_message_twice_is_filed_once_by_the_record_search(world, rules_gateway):
    # Under odoo-rules the record search also asks ['!', ('message_ids.message_id', 'in', [...])]
    # (issue 6); if Odoo answered that clause wrongly for a filed message, the gateway would skip
    # its Message-ID search and post the message a second time.
    task = world.task_id
    message_id = _message_id(world)
    first, odoo_id = _file_contributor_note(world, rules_gateway, message_id)
    second = _send_note(world, rules_gateway, world.contributor.email, "project.task", task, message_id)
    assert second == f"250 2.0.0 Already filed as Odoo message {odoo_id}", second
    assert [m["id"] for m in messages_on(world, "project.task", task) if m["message_id"] == message_id] == [odoo_id]
    # Odoo itself, asked as the integration user: the clause matches only before the message is there.
    pool = rules_gateway.services.odoo["main"]
    clause = ["!", ("message_ids.message_id", "in", [message_id])]
    assert pool.call("project.task", "search", [[("id", "=", task)] + clause]) == []
    assert pool.call("project.task", "search", [[("id", "=", task), "!",
                                                 ("message_ids.message_id", "in", [_message_id(world)])]]) == [task]
    print(f"\nodoo-rules, same Message-ID twice on project.task {task}: {first!r}, then {second!r}")


def test_batched_reads_answer_each_message_as_its_own_call_would(world, rules_gateway):
    # Issue 6: reads of messages waiting for a connection at the same time are merged (the sender
    # lookups ORed, record searches ORed under their id clauses, one record's Message-IDs joined).
    # Odoo 18 itself must answer the merged domains as it answers each alone.
    pool = rules_gateway.services.odoo["main"]
    rpc = world.gateway().execute_kw
    lookup = UserRows(pool.all_groups_field)
    emails = [world.contributor.email, world.plain.email, world.archived.email, f"nobody.{world.tag}@example.com"]
    batched = lookup.run(emails, rpc)
    alone = [lookup.run([email], rpc)[0] for email in emails]
    assert [[row["id"] for row in rows] for rows in batched] == [[row["id"] for row in rows] for rows in alone]
    assert [len(rows) for rows in batched] == [1, 1, 1, 0]

    Task = world.admin.env["project.task"].with_context(**QUIET)
    other = Task.create({"name": f"Unfollowed Task {world.tag}", "project_id": world.project_id,
                         "user_ids": [(6, 0, [])]})
    world.track("project.task", other)
    contributor = find_user(pool, world.contributor.email)
    domain = access.normalize(access.decide(pool, "project.task", contributor).domain)
    search = policy.UnfiledSearch("project.task", {"active_test": False})
    task = world.task_id
    items = [(task, domain, (_message_id(world),)), (other, domain, (_message_id(world),)),
             (task, domain, (_message_id(world),))]
    assert search.run(items, rpc) == [True, False, True]
    assert [search.run([item], rpc)[0] for item in items] == [True, False, True]
    filed = _message_id(world)
    _file_contributor_note(world, rules_gateway, filed)
    retry = [(task, domain, (filed,)), (task, domain, (_message_id(world),))]
    assert search.run(retry, rpc) == [SOLO, SOLO]
    assert [search.run([item], rpc)[0] for item in retry] == [False, True]
    print("\nbatched reads on Odoo 18: lookups of 4 addresses and record searches answered as alone")


def test_plain_portal_user_is_not_a_contributor(world, rules_gateway):
    task = world.task_id
    before = _last_message_id(world, "project.task", task)
    reply = _send_note(world, rules_gateway, world.plain.email, "project.task", task)
    assert reply.startswith("550 5.7.1 Sender may not post internal notes"), reply
    assert _last_message_id(world, "project.task", task) == before
    print(f"\nodoo-rules, plain portal user on project.task {task}: {reply!r}")


def test_contributor_on_a_task_she_cannot_read_is_refused(world, rules_gateway):
    Task = world.admin.env["project.task"].with_context(**QUIET)
    other = Task.create({"name": f"Unfollowed Task {world.tag}", "project_id": world.project_id,
                         "user_ids": [(6, 0, [])]})
    world.track("project.task", other)
    # Odoo's own answer, asked as the contributor: she reads the task she follows, not this one.
    own = world.env.connect_as(world.contributor.login, world.contributor.password)
    assert own.execute_kw("project.task", "search", [[("id", "in", [world.task_id, other])]]) == [world.task_id]
    reply = _send_note(world, rules_gateway, world.contributor.email, "project.task", other)
    assert reply.startswith("550 5.7.1 Sender has no access to this record"), reply
    assert _last_message_id(world, "project.task", other) == 0
    print(f"\nodoo-rules, contributor on unreadable project.task {other}: {reply!r}")


def test_record_that_does_not_exist_is_refused(world, rules_gateway):
    Task = world.admin.env["project.task"].with_context(active_test=False)
    missing = Task.search([], order="id desc", limit=1)[0] + 100000
    reply = _send_note(world, rules_gateway, world.contributor.email, "project.task", missing)
    assert reply.startswith("550 5.1.1 The record of this address does not exist"), reply
    print(f"\nodoo-rules, project.task {missing} (no such record): {reply!r}")
