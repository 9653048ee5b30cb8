"""Odoo Note Gateway: files authenticated email as Odoo log notes."""
