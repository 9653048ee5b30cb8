"""content.is_readable (nh3-based since issue 6) agrees with a reading by Python's HTMLParser."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest

from gateway.content import _INVISIBLE, is_readable, sanitize_html


class _Reference(HTMLParser):
    """The former implementation: visible text through HTMLParser, and any <img> with a src."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.has_image = False

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        if tag == "img" and dict(attributes).get("src"):
            self.has_image = True

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _reference(sanitized: str) -> bool:
    parser = _Reference()
    parser.feed(sanitized)
    parser.close()
    return parser.has_image or bool("".join(parser.text).translate(_INVISIBLE).strip())


CASES = {
    "<p>Hello</p>": True,
    "<p> </p><div><br></div>": False,
    "<p>&nbsp;&nbsp;</p>": False,
    "<p>\u200b\u2060\ufeff&shy;</p>": False,
    "<p>&amp;</p>": True,
    "<p>&lt;img src=x&gt;</p>": True,
    '<img src="cid:logo@example.com">': True,
    '<p><img src="https://example.com/a.png" alt=""></p>': True,
    '<img src="">': False,
    '<img alt="a picture">': False,
    '<img src="javascript:alert(1)">': False,
    '<a href="https://example.com/?a>b"></a>': False,
    '<a href="https://example.com/" title="a > b">x</a>': True,
    "<details><summary></summary></details>": False,
    "<details><summary>Quoted text</summary></details>": True,
    "<script>alert(1)</script><style>p{}</style>": False,
    "<!-- a comment -->": False,
    "<table><tr><td> </td></tr></table>": False,
    "<table><tr><td>1</td></tr></table>": True,
    "plain text without tags": True,
    "": False,
}


@pytest.mark.parametrize("markup, readable", CASES.items())
def test_readable_as_the_html_parser_reads_it(markup, readable):
    sanitized = sanitize_html(markup)
    assert is_readable(sanitized) is readable
    assert _reference(sanitized) is readable
