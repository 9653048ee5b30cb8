"""The subject shown in a note: no reply or forward prefixes, no address token."""

import pytest

from gateway.subject import clean_subject, is_forward_subject


@pytest.mark.parametrize("raw, shown", [
    ("Re: Pump P7", "Pump P7"),
    ("RE: Fwd: AW: WG: Pump P7", "Pump P7"),
    ("TR: RE : Clé du local", "Clé du local"),
    ("SV: VS: Antw: Sleutels", "Sleutels"),
    ("RE[2]: Re(3): Meter", "Meter"),
    ("RES: ENC: Orçamento", "Orçamento"),
    ("R: Rif: Sopralluogo", "Sopralluogo"),
    ("Re：返信: 転送: ポンプ", "ポンプ"),
    ("Re: [note+project.task-60-0a1b2c3d4e] Gate", "Gate"),
    ("Gate note+sale.order-23-abcdef0123@notes.example.com", "Gate"),
    ("Fwd:", ""),
    ("Review: results", "Review: results"),
    ("Reply-to rules", "Reply-to rules"),
])
def test_clean_subject(raw, shown):
    assert clean_subject(raw) == shown


@pytest.mark.parametrize("subject, forward", [
    ("Fwd: Pump P-7", True), ("FW: Pump P-7", True), ("Fw: Pump", True), ("WG: Pumpe", True),
    ("TR: Pompe", True), ("RV: Bomba", True), ("I: Pompa", True), ("Doorst: Pomp", True),
    ("ENC: Bomba", True), ("PD: Pompa", True), ("转发: 泵", True), ("転送：ポンプ", True),
    ("Fwd[2]: Pump", True), ("[External] FW: Pump", True), ("Fwd: Re: Pump", True),
    ("Re: Fwd: Pump", False), ("RE: Pump", False), ("AW: Pumpe", False), ("VS: Pumppu", False),
    ("Forward planning for P-7", False), ("Fwd pump P-7", False), ("", False),
    ("[note+project.task-60-0a1b2c3d4e] Fwd: Gate", True),
])
def test_forward_subject(subject, forward):
    assert is_forward_subject(subject) is forward
