"""Test doubles that are real servers: a JSON-RPC Odoo, a DNS server, DKIM keys."""
