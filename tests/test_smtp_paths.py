"""The listener's shortcut for plain MAIL/RCPT paths answers exactly as aiosmtpd's full parse does."""

from __future__ import annotations

import smtplib
from unittest import mock

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.smtp import LimitedLMTP, LimitedSMTP


def _server(cls: type[SMTP], local_part_limit: int = 0) -> SMTP:
    # _getaddr reads nothing of the session: an instance without a connection is enough.
    server = cls.__new__(cls)
    server.local_part_limit = local_part_limit
    return server


ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
# Everything that can change the grammar's answer: specials, white space of every kind, encoded-word
# openers, quotes, comments, a route, a domain literal, non-ASCII.
NOISE = ATEXT + ".@<>()[]:;,\\\" \t\x0b\x0c=?é\u2028"

atoms = st.text(alphabet=ATEXT, min_size=1, max_size=6)
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)
plain_paths = st.builds(lambda local, domain: f"<{local}@{domain}>", dot_atoms, dot_atoms)
suffixes = st.one_of(st.just(""), st.text(alphabet=NOISE, max_size=12),
                     st.builds(lambda gap, params: gap + params, st.sampled_from([" ", "  ", "\t", " \x0b", ""]),
                               st.sampled_from(["SIZE=5120", "BODY=8BITMIME SMTPUTF8", "(comment) SIZE=1",
                                                "X=?y?z", "", " "])))
# Near-plain arguments (a plain path with noise spliced in) and arbitrary ones.
mangled = st.builds(lambda path, at, noise: path[:at] + noise + path[at:], plain_paths,
                    st.integers(min_value=0, max_value=40), st.text(alphabet=NOISE, max_size=3))
arguments = st.one_of(st.builds(str.__add__, plain_paths, suffixes), st.builds(str.__add__, mangled, suffixes),
                      st.text(alphabet=NOISE, max_size=30))


@pytest.mark.parametrize("cls", [LimitedSMTP, LimitedLMTP])
@settings(max_examples=3000, deadline=None)
@given(arg=arguments, limit=st.sampled_from([0, 3, 64]))
@example(arg="<note+abc.def@notes.example.com> SIZE=5120 BODY=8BITMIME", limit=64)
@example(arg="<a@b>(c) SIZE=1", limit=0)
@example(arg="<a@b> \x0bSIZE=1", limit=0)
@example(arg="<a@b>\x0bSIZE=1", limit=0)
@example(arg="<=?utf-8?q?x?=@b>", limit=0)
@example(arg="<a..b@c>", limit=0)
@example(arg="<a@b.>", limit=0)
@example(arg="<>", limit=0)
@example(arg="<@route:a@b>", limit=0)
@example(arg="<abcd@b>", limit=3)
@example(arg='"', limit=0)
@example(arg="a@", limit=0)
def test_the_shortcut_gives_aiosmtpd_answer(cls, arg, limit):
    assert _server(cls, limit)._getaddr(arg) == _aiosmtpd_answer(arg, limit)


def _aiosmtpd_answer(arg: str, limit: int):
    try:
        return SMTP._getaddr(_server(SMTP, limit), arg)
    except Exception:  # noqa: BLE001 (aiosmtpd's grammar raises on some broken paths: they are malformed)
        return None, None


@pytest.mark.parametrize("arg, expected", [
    ("<note+abc.def@notes.example.com>", ("note+abc.def@notes.example.com", "")),
    ("<paula@partner.example> SIZE=5120 BODY=8BITMIME", ("paula@partner.example", "SIZE=5120 BODY=8BITMIME")),
    ("<bounce+paula=partner.example@lists.example>\tSIZE=1", ("bounce+paula=partner.example@lists.example", "SIZE=1")),
])
def test_plain_paths_take_the_shortcut(arg, expected):
    # With the full parse broken, a plain path still gets its answer: it never went that way.
    with mock.patch.object(SMTP, "_getaddr", side_effect=AssertionError("full parse used")):
        assert _server(LimitedSMTP)._getaddr(arg) == expected


@pytest.mark.parametrize("arg", ["<>", '<"quoted local"@example.com>', "<@relay.example:a@example.com>",
                                 "<a@[192.0.2.1]>", "<a@b> (comment) SIZE=1", "<pâula@example.com>",
                                 "<=?utf-8?q?x?=@example.com>", "paula@example.com"])
def test_other_paths_take_the_full_parse(arg):
    with mock.patch.object(SMTP, "_getaddr", return_value=("full", "parse")) as full:
        assert _server(LimitedSMTP)._getaddr(arg) == ("full", "parse")
    full.assert_called_once_with(arg)


def test_the_local_part_limit_still_refuses_a_plain_path():
    assert _server(LimitedSMTP, local_part_limit=64)._getaddr(f"<{'a' * 65}@example.com>") == (None, None)
    assert _server(LimitedSMTP, local_part_limit=64)._getaddr(f"<{'a' * 64}@example.com>") == (
        f"{'a' * 64}@example.com", "")


@pytest.mark.parametrize("arg", ['"', "a@", ".\u00e90@[,", ".@[\t"])
def test_a_path_the_grammar_cannot_parse_is_malformed_not_an_error(arg):
    with pytest.raises(Exception):  # noqa: B017 (what aiosmtpd's own parse does with it)
        SMTP._getaddr(_server(SMTP), arg)
    assert _server(LimitedSMTP)._getaddr(arg) == (None, None)


def test_the_listener_answers_a_broken_path_with_553_and_keeps_the_session(gateway):
    with smtplib.SMTP("127.0.0.1", gateway.port, timeout=10) as client:
        client.ehlo("client.example.com")
        assert client.docmd('MAIL FROM:"') == (553, b"5.1.3 Error: malformed address")
        assert client.docmd("MAIL FROM:<portal.contrib@example.com>")[0] == 250
        assert client.docmd("RCPT TO:a@") == (553, b"5.1.3 Error: malformed address")
