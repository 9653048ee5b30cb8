"""odoo-rules against a real Odoo: the evaluated rules find what each user reads itself (runs only against a real Odoo)."""

from __future__ import annotations

import odoorpc
import pytest

from gateway import access, policy
from gateway.config import DomainRules, OdooConnection
from gateway.context import Target
from gateway.identity import find_user
from gateway.odoo import OdooPool
from gateway.refusals import RecordAccessDenied

from .provision import real_odoo_or_skip

ENV = real_odoo_or_skip()

pytestmark = pytest.mark.real_odoo




@pytest.fixture(scope="module")
def admin_pool(world):
    # Read as the administrator: this suite does not depend on setup-odoo having been run, and
    # the administrator reads ir.rule. What it cannot read itself is left out of the comparison.
    pool = OdooPool("real", OdooConnection(url=ENV.url, database=ENV.db, login=ENV.admin_login,
                                           api_key_env="UNUSED", timeout=30), ENV.admin_password)
    yield pool
    pool.close()


@pytest.mark.parametrize("who", ["contributor", "plain", "internal"])
@pytest.mark.parametrize("model", ["project.task", "sale.order", "project.project"])
def test_evaluated_rules_find_what_the_user_reads(world, admin_pool, who, model):
    person = getattr(world, who)
    user = find_user(admin_pool, person.email)
    decision = access.decide(admin_pool, model, user, ttl=0)
    visible_to_admin = set(admin_pool.call(model, "search", [[]], context={"active_test": False}))
    evaluated = set(admin_pool.call(model, "search", [decision.domain], context={"active_test": False}))
    own = ENV.connect_as(person.login, person.password)
    if not decision.acl:
        # No read ACL for any of the user's groups: Odoo refuses the model outright.
        with pytest.raises(odoorpc.error.RPCError, match="You are not allowed to access"):
            own.execute_kw(model, "search", [[]])
        return
    seen = set(own.execute_kw(model, "search", [[]], {"context": {"active_test": False}}))
    assert evaluated & visible_to_admin == seen & visible_to_admin


def test_contributor_passes_odoo_rules_on_the_world_records(world, admin_pool):
    rules = DomainRules(domain=world.domain, odoo="real", secrets=["x" * 16],
                        note={"models": ["project.task", "sale.order"]})
    contributor = find_user(admin_pool, world.contributor.email)
    internal = find_user(admin_pool, world.internal.email)
    for model, res_id in (("project.task", world.task_id), ("sale.order", world.sale_order_id)):
        target = Target("note", world.domain, model, res_id, "x@" + world.domain)
        policy.check_record_access(admin_pool, target, contributor, rules=rules)
    # The internal user follows nothing; whether it may read depends on its groups' rules, which
    # the evaluation and Odoo must agree on (above). The customer's order is not its own.
    target = Target("note", world.domain, "sale.order", world.sale_order_id, "x@" + world.domain)
    own = ENV.connect_as(world.internal.login, world.internal.password)
    try:
        readable = bool(own.execute_kw("sale.order", "search", [[("id", "=", world.sale_order_id)]]))
    except Exception:  # no ACL at all for a plain internal user
        readable = False
    if readable:
        policy.check_record_access(admin_pool, target, internal, rules=rules)
    else:
        with pytest.raises(RecordAccessDenied):
            policy.check_record_access(admin_pool, target, internal, rules=rules)


def test_a_record_hidden_from_the_integration_user_is_told_from_a_missing_one(world):
    # Operator review: an integration user in "Sales / User: Own Documents Only" searched the
    # world's order (salesperson: the admin) in vain, and the gateway called it missing (550 5.1.1).
    # A read of the id tells them apart: AccessError (hidden, 451) or MissingError (missing, 550).
    from gateway.refusals import RecordHiddenFromGateway, RecordNotFound

    all_documents = world.admin.env.ref("sales_team.group_sale_salesman_all_leads").id
    own_documents = world.admin.env.ref("sales_team.group_sale_salesman").id
    users = world.admin.env["res.users"]
    pool = OdooPool("real", OdooConnection(url=ENV.url, database=ENV.db, login=world.integration.login,
                                           api_key_env="UNUSED", timeout=30), world.integration.api_key)
    order = Target("note", world.domain, "sale.order", world.sale_order_id, "x@" + world.domain)
    try:
        policy.check_exists(pool, order)  # All Documents, as provisioned: it exists and is seen.
        users.browse(world.integration.user_id).write({"groups_id": [(3, all_documents), (4, own_documents)]})
        # The admin made the order, so the admin is its salesperson: "Personal Orders" hides it.
        salesperson = world.admin.execute_kw("sale.order", "read", [[world.sale_order_id], ["user_id"]])[0]["user_id"]
        assert salesperson and salesperson[0] != world.integration.user_id
        with pytest.raises(RecordHiddenFromGateway):
            policy.check_exists(pool, order)
        with pytest.raises(RecordNotFound):
            policy.check_exists(pool, Target("note", world.domain, "sale.order", 999999999, "x@" + world.domain))
    finally:
        users.browse(world.integration.user_id).write({"groups_id": [(4, all_documents)]})
        pool.close()
