"""Odoo 17, 18 and 19: the version read at login picks the res.users group fields, in one place."""

from __future__ import annotations

import pytest

from gateway import policy
from gateway.config import DomainRules, OdooConnection
from gateway.context import Target
from gateway.identity import find_user
from gateway.odoo import OdooPool, user_group_fields
from gateway.setup_odoo import Setup
from gateway.testing.odoo import TestOdoo
from gateway.testing.odoo_demo import (ADMIN_LOGIN, ADMIN_PASSWORD, CONTRIBUTOR_GROUP_ID, DEMO_API_KEY, PAULA_EMAIL,
                                       PRIVATE_TASK_ID, TASK_ID)
from gateway.refusals import RecordAccessDenied


def test_field_names_per_version():
    assert user_group_fields(17) == user_group_fields(18) == ("groups_id", "groups_id")
    assert user_group_fields(19) == ("group_ids", "all_group_ids")


@pytest.mark.parametrize("version, assign, effective", [
    ("17.0", "groups_id", "groups_id"), ("18.0", "groups_id", "groups_id"), ("19.0", "group_ids", "all_group_ids"),
])
def test_identity_and_odoo_rules_on_each_version(version, assign, effective):
    with TestOdoo.with_demo_data(version=version, note_gateway_setup=False) as odoo:
        # setup-odoo, as the admin, assigns through the version's field.
        import odoorpc

        admin = odoorpc.ODOO(odoo.host, port=odoo.port, timeout=5)
        admin.login(odoo.database, ADMIN_LOGIN, ADMIN_PASSWORD)
        report = Setup(admin, admin.version).run({}, ["gateway"], ["project.task"])
        assert "added gateway (uid 10) to note_gateway.group_note_gateway" in report
        # The portal task rule goes through project.collaborator, which the gateway (no Project
        # user) could not read: without it every search of a task as the gateway fails.
        assert any(line.startswith("created read access on project.collaborator") for line in report), report

        pool = OdooPool("main", OdooConnection(url=odoo.url, database=odoo.database, login="gateway",
                                               api_key_env="UNUSED", timeout=5), DEMO_API_KEY)
        try:
            paula = find_user(pool, PAULA_EMAIL)
            assert (pool.groups_field, pool.all_groups_field) == (assign, effective)
            assert CONTRIBUTOR_GROUP_ID in paula.group_ids
            rules = DomainRules(domain="notes.example.com", odoo="main", secrets=["x" * 16],
                                note={"models": ["project.task"]})
            for res_id, allowed in ((TASK_ID, True), (PRIVATE_TASK_ID, False)):
                target = Target("note", "notes.example.com", "project.task", res_id, "x@notes.example.com")
                if allowed:
                    policy.check_record_access(pool, target, paula, rules=rules)
                else:
                    with pytest.raises(RecordAccessDenied):
                        policy.check_record_access(pool, target, paula, rules=rules)
        finally:
            pool.close()
