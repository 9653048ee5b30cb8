"""Scans rewritten for speed (issue 6) agree with the regular expressions they replaced."""

from __future__ import annotations

import random
import re

import pytest

from gateway.content import strip_trailing_blanks
from gateway.message import check_line_endings
from gateway.refusals import BareLineEnding

# The former implementations, kept here as the reference.
BARE_LINE_ENDING = re.compile(rb"(?<!\r)\n|\r(?!\n)")
TRAILING_BLANKS = re.compile(r"(?:\s|<br>|<p>(?:&nbsp;|\s|<br>)*</p>|<div>(?:&nbsp;|\s|<br>)*</div>)+$")

LINE_PIECES = [b"a", b"Subject: x", b"\r\n", b"\r", b"\n", b"\n\r", b"\r\r\n", b"\r\n\n", b" ", b""]
HTML_PIECES = ["text", "<p>a</p>", " ", "\n", "\t", "<br>", "<p></p>", "<p>&nbsp;</p>", "<p> <br> </p>",
               "<div><br></div>", "<div>&nbsp; </div>", "&nbsp;", "<p>", "</p>", "<div>", "</div>", "br>",
               "<p>&nbsp;x</p>", "<b> </b>", "\u00a0"]


def _bare(raw: bytes) -> bool:
    try:
        check_line_endings(raw)
    except BareLineEnding:
        return True
    return False


def test_bare_line_endings_found_as_by_the_former_search():
    generator = random.Random(6)
    for _ in range(5000):
        raw = b"".join(generator.choice(LINE_PIECES) for _ in range(generator.randint(0, 12)))
        assert _bare(raw) is bool(BARE_LINE_ENDING.search(raw)), raw


@pytest.mark.parametrize("raw, bare", [(b"a\r\nb\r\n", False), (b"a\nb", True), (b"a\rb", True),
                                       (b"a\n\rb", True), (b"", False)])
def test_bare_line_endings(raw, bare):
    assert _bare(raw) is bare


def test_trailing_blanks_stripped_as_by_the_former_substitution():
    generator = random.Random(6)
    for _ in range(5000):
        body = "".join(generator.choice(HTML_PIECES) for _ in range(generator.randint(0, 10)))
        assert strip_trailing_blanks(body) == TRAILING_BLANKS.sub("", body), body


def test_trailing_blanks():
    assert strip_trailing_blanks("<p>Hi</p>\n<p>&nbsp;</p><div><br></div> <br>") == "<p>Hi</p>"
    assert strip_trailing_blanks("<p>Hi&nbsp;</p>") == "<p>Hi&nbsp;</p>"
