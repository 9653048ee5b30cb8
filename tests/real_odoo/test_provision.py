"""The real-Odoo world: provisioning works and is removed again (runs only against a real Odoo)."""

from __future__ import annotations

import odoorpc
import pytest

from .provision import (cleanup, followers_of, GROUP_MODULE, GROUP_NAME, messages_on, notifications_for_message,
                        portal_session, provision, real_odoo_or_skip)

ENV = real_odoo_or_skip()

pytestmark = pytest.mark.real_odoo




def test_integration_user_logs_in_with_its_api_key(world):
    gateway = world.gateway()
    assert gateway.env.uid == world.integration.user_id
    assert world.integration.api_key != world.integration.password
    assert gateway.execute_kw("res.users", "has_group", [[world.integration.user_id], "base.group_user"]) is True


def test_contributor_group_resolves_for_the_integration_user(world):
    gateway = world.gateway()
    model, res_id = gateway.execute("ir.model.data", "check_object_reference", GROUP_MODULE, GROUP_NAME)
    assert (model, res_id) == ("res.groups", world.group_id)
    members = gateway.execute("res.users", "search", [("groups_id", "in", [res_id])])
    assert world.contributor.user_id in members and world.plain.user_id not in members
    archived = world.admin.env["res.users"].with_context(active_test=False).read(
        [world.archived.user_id], ["active", "groups_id"])[0]
    assert archived["active"] is False and world.group_id in archived["groups_id"]


def test_records_are_followed_by_the_portal_users(world):
    portal = {world.contributor.partner_id, world.plain.partner_id}
    assert portal <= set(followers_of(world, "project.task", world.task_id))
    assert portal <= set(followers_of(world, "sale.order", world.sale_order_id))
    assert world.internal.partner_id not in followers_of(world, "project.task", world.task_id)
    assert set(world.task_followers) - portal == {world.admin.env.user.partner_id.id}  # task creator
    assert set(world.order_followers) == portal


def test_integration_user_can_post_a_note_on_both_records(world):
    gateway = world.gateway()
    context = {"mail_create_nosubscribe": True, "mail_post_autofollow": False}
    for model, res_id in (("project.task", world.task_id), ("sale.order", world.sale_order_id)):
        message = gateway.execute_kw(model, "message_post", [[res_id]], {
            "body": "provision check", "message_type": "comment", "subtype_xmlid": "mail.mt_note",
            "author_id": world.contributor.partner_id, "context": context})
        assert message in [m["id"] for m in messages_on(world, model, res_id)]
        assert notifications_for_message(world, message) == []
        assert world.integration.partner_id not in followers_of(world, model, res_id)


def test_portal_user_sees_comments_but_not_notes(world):
    gateway = world.gateway()
    context = {"mail_create_nosubscribe": True, "mail_post_autofollow": False}
    common = {"message_type": "comment", "author_id": world.contributor.partner_id,
              "body_is_html": True, "context": context}
    note = gateway.execute_kw("project.task", "message_post", [[world.task_id]],
                              {"body": "<p>provision note</p>", "subtype_xmlid": "mail.mt_note", **common})
    comment = gateway.execute_kw("project.task", "message_post", [[world.task_id]],
                                 {"body": "<p>provision comment</p>", "subtype_xmlid": "mail.mt_comment", **common})
    assert {note, comment} <= {m["id"] for m in messages_on(world, "project.task", world.task_id)}
    session = portal_session(world, world.plain.login, world.plain.password)
    seen = session.chatter("project.task", world.task_id)
    assert comment in [m["id"] for m in seen] and note not in [m["id"] for m in seen]
    assert session.can_read("project.task", world.task_id)
    assert session.can_read("sale.order", world.sale_order_id)


def test_cleanup_leaves_nothing_and_revokes_the_key():
    world = provision(ENV)
    key, login = world.integration.api_key, world.integration.login
    assert cleanup(world) == []
    admin = ENV.connect()
    Users = admin.env["res.users"].with_context(active_test=False)
    assert not Users.search([("login", "like", world.tag)])
    assert not admin.env["res.partner"].with_context(active_test=False).search([("email", "like", world.tag)])
    assert not admin.env["sale.order"].search([("id", "=", world.sale_order_id)])
    assert not admin.env["project.project"].with_context(active_test=False).search([("id", "=", world.project_id)])
    with pytest.raises(odoorpc.error.RPCError):
        ENV.connect_as(login, key)
