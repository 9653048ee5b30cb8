"""The body to file: the message's text as sanitized HTML fit for an Odoo chatter."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator, Sequence

import nh3

from gateway import quotes
from gateway.deadlines import check_deadline, current_deadline
from gateway.mime import content_id_key
from gateway.context import Attachment, ParsedMessage
from gateway.refusals import (EmptyBody, EncryptedMessage, MessageTookTooLong, OnlyRefusedFiles, OpaqueSignedMessage,
                              OutlookTnefOnly, UnknownTransferEncoding)
from gateway.subject import is_forward_subject

# What an Odoo chatter message may hold. Odoo sanitizes again on its side (ODOO_FACTS.md b), but
# the gateway sanitizes first so that what it journals and what a template wraps is already safe,
# and so that nothing depends on the settings of one Odoo database.
ALLOWED_TAGS = frozenset(
    {
        "a", "b", "blockquote", "br", "code", "details", "div", "em", "h1", "h2", "h3", "h4",
        "h5", "h6", "hr", "i", "img", "li", "ol", "p", "pre", "s", "span", "strong", "sub",
        "summary", "sup", "u", "ul",
        "table", "caption", "colgroup", "col", "thead", "tbody", "tfoot", "tr", "th", "td",
    }
)
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "width", "height"},
    # Without the spans a table written in a mail client falls apart, and numbers are harmless.
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan"},
    "col": {"span"},
    "colgroup": {"span"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto", "cid", "data"})
LINK_REL = "noopener noreferrer"

# These elements hold code or metadata, not text: dropping only the tags would leave their content
# (a stylesheet, a script, the <title> of an HTML mail) in the note as stray text.
_CONTENT_DROPPED_TAGS = frozenset({"script", "style", "title", "template", "textarea", "select"})

# Which schemes each URL attribute accepts. "data" is listed in URL_SCHEMES only so that nh3 lets
# inline images through; links never get it, and images only get the raster types checked below.
_SCHEMES_BY_ATTRIBUTE = {
    ("a", "href"): frozenset({"http", "https", "mailto", "cid"}),
    ("img", "src"): frozenset({"http", "https", "cid", "data"}),
}
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*):", re.IGNORECASE)
# SVG is left out on purpose: it is a document that can carry scripts, not a picture.
_DATA_IMAGE = re.compile(r"^data:image/(?:png|jpeg|jpg|gif|webp|bmp);base64,[a-z0-9+/=\s]+$", re.IGNORECASE)
_NUMBER = re.compile(r"^[0-9]{1,4}%?$")
# Browsers ignore tabs and newlines anywhere in a URL and leading spaces and control characters
# (WHATWG URL standard, "basic URL parser"), so a scheme is read the way they read it.
_URL_LEADING_IGNORED = re.compile(r"^[\x00-\x20]+")
_URL_IGNORED = re.compile(r"[\t\n\r]")


def _browser_url(value: str) -> str:
    """The URL as a browser reads it: leading spaces and controls, tabs and newlines ignored."""
    return _URL_IGNORED.sub("", _URL_LEADING_IGNORED.sub("", value))


def _filter_attribute(tag: str, attribute: str, value: str) -> str | None:
    """Narrow what nh3's allow-list lets through; nh3 reports an exception here, never raises it."""
    schemes = _SCHEMES_BY_ATTRIBUTE.get((tag, attribute))
    if schemes is not None:
        url = _browser_url(value)
        match = _SCHEME.match(url)
        # A relative URL has no base in an email; inside Odoo it would point at Odoo itself, where a
        # crafted path could act for whoever clicks it. Only absolute URLs are kept.
        if match is None or match.group(1).lower() not in schemes:
            return None
        if match.group(1).lower() == "data" and not _DATA_IMAGE.match(url):
            return None
        return value
    if attribute in {"width", "height", "colspan", "rowspan", "span"}:
        return value if _NUMBER.match(value.strip()) else None
    return value


# Built once (nh3.clean would convert the allow-list on every call).
_CLEANER = nh3.Cleaner(
    tags=set(ALLOWED_TAGS),
    clean_content_tags=set(_CONTENT_DROPPED_TAGS),
    attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
    attribute_filter=_filter_attribute,
    url_schemes=set(URL_SCHEMES),
    link_rel=LINK_REL,
    strip_comments=True,
)


def sanitize_html(text: str) -> str:
    """Keep only the markup a chatter message needs: no scripts, styles, handlers or odd URLs."""
    return _CLEANER.clean(text)


# Schemes whose images a browser fetches from elsewhere. cid: (the message's own files, which Odoo
# points at /web/image/<id>) and data: (inside the message) load nothing from the sender's side;
# relative and protocol-relative URLs never get this far (_filter_attribute drops them).
_REMOTE_IMAGE_SCHEMES = frozenset({"http", "https"})
# In nh3's output (html5ever's serializer) every attribute value is double-quoted, with & " < >
# escaped in it, and text has < and > escaped: an <img> tag or an <a> tag is matched whole.
_IMAGE = r'<img(?P<attributes>(?:\s+[^\s="<>/]+="[^"]*")*)\s*/?>'
_IMAGE_TAG = re.compile(_IMAGE, re.IGNORECASE)
_IMAGE_OR_LINK_TAG = re.compile(rf'{_IMAGE}|(?P<open><a[\s>])|(?P<close></a>)', re.IGNORECASE)
_ATTRIBUTE = re.compile(r'([^\s="<>/]+)="([^"]*)"')


def _image_url(match: re.Match[str]) -> tuple[dict[str, str], str, str]:
    """Of an <img> tag (_IMAGE): its attributes (names in lower case, values unescaped), the URL of
    its src as a browser reads it (_browser_url), and that URL's scheme in lower case ("" for none)."""
    attributes = {name.lower(): html.unescape(value) for name, value in _ATTRIBUTE.findall(match.group("attributes"))}
    url = _browser_url(attributes.get("src", ""))
    scheme = _SCHEME.match(url)
    return attributes, url, scheme.group(1).lower() if scheme else ""


def link_remote_images(sanitized: str) -> tuple[str, int]:
    """Each remote image of sanitized HTML as a link to it, and how many there were.

    A remote image is fetched by the browser of every reader who opens the chatter, which tells its
    server when the note was read, from which address and with which browser: a tracking pixel in an
    internal note leaks its readers to the outside. The link shows the image's alt text (else its URL)
    so that a reader can still open it deliberately; inside a link (a linked logo) it becomes that
    text alone, since links do not nest. Images that are the message's own files (cid:) and data:
    images stay.
    """
    if "<img" not in sanitized:
        return sanitized, 0
    count = 0
    link_depth = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count, link_depth
        if match.group("open"):
            link_depth += 1
            return match.group(0)
        if match.group("close"):
            link_depth = max(0, link_depth - 1)
            return match.group(0)
        attributes, url, scheme = _image_url(match)
        if scheme not in _REMOTE_IMAGE_SCHEMES:
            return match.group(0)
        count += 1
        label = html.escape(attributes.get("alt", "").strip() or url)
        if link_depth:
            return label
        return f'<a href="{html.escape(url)}" rel="{LINK_REL}">{label}</a>'

    return _IMAGE_OR_LINK_TAG.sub(replace, sanitized), count


def point_images_at_files(sanitized: str, filed: Sequence[Attachment], parts: Sequence[Attachment], *,
                          placeholder: bool = True) -> str:
    """Sanitized HTML whose every <img src="cid:..."> names a filed file as Odoo matches it, or is text.

    Odoo points an <img src="cid:X"> at the posted file whose cid is exactly X (Odoo 18
    mail_thread._process_attachments_for_post, and _message_parse_extract_payload for its mail
    gateway) and leaves every other one as it is, a broken picture in the chatter and in the
    notification email (found by a review on a real Odoo 18). A cid: URL names a file as
    gateway.mime reads it, URL-decoded (RFC 2392) and in any case: such an image of a filed file
    gets src "cid:" and the Content-ID exactly as the file is posted (post.py), so that
    "cid:photo1%40host.example" and "cid:PHOTO2@HOST.EXAMPLE" show their files. An image whose file
    is not filed (the attachment rules left out an Outlook signature logo over max_file_size)
    becomes its alt text, else "[image not filed: <file name>]" (the part of ``parts``, the
    message's files, with that Content-ID), else "[image not filed]" when no part has it.
    ``filed`` are the files posted with the message. Without ``placeholder`` an image whose file is
    not filed is dropped, text and all: what the readability check reads, since it shows nothing of
    the sender's.
    """
    if "<img" not in sanitized:
        return sanitized
    filed_ids: dict[str, str] = {}
    for item in filed:
        if item.content_id:
            filed_ids.setdefault(item.content_id.lower(), item.content_id)
    names: dict[str, str] = {}
    for item in parts:
        if item.content_id:
            names.setdefault(item.content_id.lower(), item.filename)

    def replace(match: re.Match[str]) -> str:
        attributes, url, scheme = _image_url(match)
        if scheme != "cid":
            return match.group(0)
        key = content_id_key(url[len("cid:"):])
        content_id = filed_ids.get(key)
        if content_id is not None:
            if attributes["src"] == f"cid:{content_id}":
                return match.group(0)
            return "<img" + "".join(
                f' {name}="{html.escape("cid:" + content_id) if name.lower() == "src" else value}"'
                for name, value in _ATTRIBUTE.findall(match.group("attributes"))) + ">"
        if not placeholder:
            return ""
        name = names.get(key)
        text = " ".join(attributes.get("alt", "").split()) or (
            f"[image not filed: {name}]" if name else "[image not filed]")
        return html.escape(text)

    return _IMAGE_TAG.sub(replace, sanitized)


# A URL starts with a scheme ("mailto:" too, so "mailto:a@b.example" is one link) or "www." and runs
# to the next space or angle bracket; _split_trailing_punctuation then gives trailing punctuation
# back to the sentence.
_URL = r"(?P<url>\b(?:https?://|mailto:|www\.)[^\s<>\"]+)"
# An address is matched only where it does not continue a longer word, so "a.b@c.d" is one link.
_EMAIL = r"(?P<email>(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,})"
_LINK = re.compile(f"{_URL}|{_EMAIL}", re.IGNORECASE)
_TRAILING_PUNCTUATION = ".,;:!?'\"*"
_CLOSING_BRACKETS = {")": "(", "]": "["}
_BLANK_LINES = re.compile(r"\n[ \t\f\v]*\n\s*")


def _split_trailing_punctuation(url: str) -> tuple[str, str]:
    """Return the URL and the punctuation after it that belongs to the sentence, not the link.

    Linear in the URL's length: the brackets are counted once and the counts kept as the end
    moves back. Counting them again for every trailing bracket made a URL followed by a million
    ")" (a 1.3 MB note) hold a pipeline thread for about 300 s (found by a security review).
    """
    end = len(url)
    # How many of each closing bracket, and of its opening one, are left before ``end``.
    closing = {bracket: url.count(bracket) for bracket in _CLOSING_BRACKETS}
    opening = {bracket: url.count(opener) for bracket, opener in _CLOSING_BRACKETS.items()}
    while end:
        last = url[end - 1]
        if last in _TRAILING_PUNCTUATION:
            end -= 1
        elif last in _CLOSING_BRACKETS and closing[last] > opening[last]:
            # "(see https://example.com/a)" ends the link before ")"; a Wikipedia URL that holds
            # its own balanced "(...)" keeps it.
            end -= 1
            closing[last] -= 1
        else:
            break
    return url[:end], url[end:]


def _linked_line(line: str) -> str:
    """Escape one line of plain text and turn its URLs and email addresses into links."""
    if "@" not in line and ":" not in line and "www." not in line.lower():
        # No scheme, "www." or address: nothing _LINK could match, and most lines are like this.
        return html.escape(line)
    pieces: list[str] = []
    position = 0
    for match in _LINK.finditer(line):
        pieces.append(html.escape(line[position:match.start()]))
        position = match.end()
        if match.group("url"):
            url, rest = _split_trailing_punctuation(match.group("url"))
            href = f"http://{url}" if url.lower().startswith("www.") else url
            pieces.append(f'<a href="{html.escape(href)}">{html.escape(url)}</a>{html.escape(rest)}')
        else:
            address = match.group("email")
            pieces.append(f'<a href="mailto:{html.escape(address)}">{html.escape(address)}</a>')
    pieces.append(html.escape(line[position:]))
    return "".join(pieces)


def text_to_html(text: str) -> str:
    """Plain text as HTML: a paragraph per blank-line-separated block, <br> for line breaks, links."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = []
    # The message's deadline, checked before each line (a line costs what its length does).
    when = current_deadline()
    for block in _BLANK_LINES.split(text):
        lines = [line.rstrip() for line in block.strip("\n").split("\n")]
        if not any(lines):
            continue
        linked = []
        for line in lines:
            if when is not None and time.monotonic() > when:
                raise MessageTookTooLong()
            linked.append(_linked_line(line))
        paragraphs.append("<p>" + "<br>\n".join(linked) + "</p>")
    return "\n".join(paragraphs)


# All tags dropped, their text kept: what a reader sees. Only <img src>: what shows without text.
_TEXT_ONLY = nh3.Cleaner(tags=set(), clean_content_tags=set())
_IMAGES_ONLY = nh3.Cleaner(tags={"img"}, attributes={"img": {"src"}}, url_schemes=set(URL_SCHEMES))


# Characters that take no room on the page; str.strip() keeps them because they are not spaces.
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))


# An <img> with a non-empty src, as nh3 writes a tag left with that one attribute.
_IMAGE = re.compile(r'<img src="[^"]')


def visible_text(sanitized: str) -> str:
    """The characters a reader sees of sanitized HTML."""
    return html.unescape(_TEXT_ONLY.clean(sanitized))


# An inline OpenPGP message (RFC 4880 section 6.2): the armour lines that open and close it.
_PGP_BEGIN = "-----BEGIN PGP MESSAGE-----"
_PGP_END = "-----END PGP MESSAGE-----"
# Where HTML breaks a line: visible_text joins the lines of <br> and of block elements.
_LINE_BREAK = re.compile(r"<br\s*/?>|</(?:p|div|pre|li|tr|h[1-6]|blockquote|table)>", re.IGNORECASE)


def is_inline_pgp(sanitized: str, text: str) -> bool:
    """True if the body is only inline OpenPGP ciphertext: armoured blocks, each from its BEGIN
    line to its END line, and nothing around them but blank lines. ``text`` is the body's
    ``visible_text``.

    A text that mentions the armour line, or explains a block pasted into it, is the sender's text
    (a review found a text starting with the BEGIN line and no END line refused as encrypted). Only
    a text that starts with the BEGIN line is read again, line by line, in one pass.
    """
    if not text.lstrip().startswith(_PGP_BEGIN):
        return False
    inside = False
    for line in visible_text(_LINE_BREAK.sub("\\g<0>\n", sanitized)).splitlines():
        line = line.strip()
        if inside:
            inside = line != _PGP_END
        elif line == _PGP_BEGIN:
            inside = True
        elif line:
            return False
    return not inside


def is_readable(sanitized: str, text: str | None = None) -> bool:
    """True if the HTML shows something: visible text, or an image (a pasted screenshot counts).

    nh3 does the HTML parsing twice over (all tags dropped: the text; only <img src>: the images),
    a quarter of the CPU of Python's HTMLParser (issue 6). ``text``, if given, is the
    ``visible_text`` of ``sanitized`` the caller already has, so it is not computed again.
    """
    if text is None:
        text = visible_text(sanitized)
    if text.translate(_INVISIBLE).strip():
        return True
    return "<img" in sanitized and bool(_IMAGE.search(
        _IMAGES_ONLY.clean(sanitized)))


# The blank lines a client leaves between the text and the quote it was cut from.
# The blanks are spaces, <br>, and paragraphs or divs holding only those or &nbsp;. They are
# matched on the reversed body from its start: a search for them before the end of the body tries
# every start position (0.16 ms for 4 KB); this touches only the blanks.
_TRAILING_BLANKS_REVERSED = re.compile(r"(?:\s|>rb<|>p/<(?:;psbn&|\s|>rb<)*>p<|>vid/<(?:;psbn&|\s|>rb<)*>vid<)+")


def strip_trailing_blanks(body: str) -> str:
    match = _TRAILING_BLANKS_REVERSED.match(body[::-1])
    return body[:len(body) - match.end()] if match else body

# The heading of the collapsed block that keeps what was trimmed, so that nothing is lost.
TRIMMED_SUMMARY = "Quoted text and signature"


# What Odoo 18 hides of a note (odoo/tools/mail.py tag_quote, run by html_normalize on every body it
# stores): in the text of an element, the part from a line starting with ">" and the part from a
# "--" line followed by more lines, each wrapped in a <span data-o-mail-quote="1">; and a whole
# element whose text ends with a "--" line and that holds a <br>. The chatter shows those only
# behind "Read More". tag_quote reads an element's text (what follows its start tag up to the next
# tag), never a tail (what follows an end tag or a <br>), and these are its patterns.
_ODOO_TEXT_QUOTE = re.compile(r"((?:\n[>]+[^\n\r]*)+|(?:(?:^|\n)[-]{2}[\s]?[\r\n]{1,2}[\s\S]+))")
_ODOO_SIGNATURE = re.compile(r"((?:(?:^|\n)[-]{2}[\s]?$))")
# A text run of sanitized HTML that Odoo reads as an element's text: at the start of the body (a
# template may put the body first in an element) or right after a start tag, not a void one (text
# after <br>, <hr>, <img> or <col> is that element's tail). nh3 escapes "<" in text, and quotes
# every attribute value, so a tag is matched whole. Only runs that hold one of the patterns' marks
# ("\n>" escaped, or "--") are read further.
_ODOO_READ_TEXT = re.compile(
    r'(?P<tag>\A|<(?!(?:br|hr|img|col|wbr)\b)[a-z][a-z0-9]*(?:\s+[^\s="<>/]+(?:="[^"]*")?)*\s*>)'
    r'(?P<text>[^<]*?(?:\n&gt;|--)[^<]*)', re.IGNORECASE)


def _odoo_would_hide(text: str) -> bool:
    return bool(_ODOO_TEXT_QUOTE.search(text) or _ODOO_SIGNATURE.search(text))


def shield_from_odoo_quote_marks(sanitized: str) -> str:
    """Sanitized HTML in which Odoo finds no quoted text or signature in the sender's own lines.

    Odoo 18 hides a ">" line of a <pre> log ("> show alarms") behind "Read More", and everything
    after a "--" line of a <pre> or of a plain-text paragraph ("--", then a checklist): tag_quote
    (see _ODOO_TEXT_QUOTE) reads them as a quote or a signature (found by a review of silent content
    loss on a real Odoo 18). What the gateway files is what it decided to show: in each element
    text Odoo would mark, each line goes in a <span> of its own, the line breaks between the spans,
    so that no element's text holds a line break and the element's own text is empty. A reader sees
    the same text. A <blockquote> is left as it is: Odoo marks it by its tag, not its text.
    """
    if "--" not in sanitized and "\n&gt;" not in sanitized:
        return sanitized

    def shield(match: re.Match[str]) -> str:
        text = match.group("text")
        if not _odoo_would_hide(html.unescape(text)):
            return match.group(0)
        lines = (f"<span>{line}</span>" if line.strip() else line for line in text.split("\n"))
        return match.group("tag") + "\n".join(lines)

    return _ODOO_READ_TEXT.sub(shield, sanitized)


def _candidate_splits(message: ParsedMessage) -> Iterator[quotes.Split]:
    """The message's text split into own part and trimmed part, best first: HTML, then plain text."""
    # The HTML part is what the author saw when writing. The plain part is tried after it, not only
    # when there is no HTML part, because some clients send an HTML part that holds nothing
    # readable (an empty template) next to a plain part that holds the text.
    if message.text_html.strip():
        yield quotes.split_html(message.text_html, message.from_name)
    if message.text_plain.strip():
        yield quotes.split_text(message.text_plain, message.from_name)


# Outlook's Transport Neutral Encapsulation Format, by its types and by the name Outlook gives it.
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})


def _is_tnef(attachment: Attachment) -> bool:
    return attachment.content_type.lower() in _TNEF_TYPES or attachment.filename.lower() == "winmail.dat"


# A plain part no longer than this that shares no word with the HTML is a stub (_is_stub).
_STUB_MAX_CHARS = 200
_WORDS = re.compile(r"\w+")


def _words(text: str) -> list[str]:
    return _WORDS.findall(text.casefold())


def _is_stub(plain: str, html_text: str) -> bool:
    """True if ``plain``, a plain part's text, is no rendering of the HTML part's text ``html_text``
    but a placeholder a tool writes for readers without HTML ("(html)", "[HTML message]"): short,
    and not one of its words is in the HTML. A rendering of the HTML shares its words; a short text
    that shares some ("Site 12 done") is kept, since it may be the sender's own."""
    if len(plain.strip()) > _STUB_MAX_CHARS:
        return False
    words = _words(plain)
    html_words = set(_words(html_text))
    # No word at all ("👍", "..."): nothing says it is not the sender's.
    return bool(words) and not any(word in html_words for word in words)


def _holds(text: str, inner: str) -> bool:
    """True if the words of ``inner`` are all in ``text``, in order: ``text`` (a plain part) holds
    ``inner`` (what was trimmed of the HTML part) whatever the line breaks, the *bold* marks and
    the link URLs that a plain rendering adds."""
    words = iter(_words(text))
    return all(word in words for word in _words(inner))


def extract_body(message: ParsedMessage, files: list[Attachment] | None = None,
                 refused: Sequence[str] = ()) -> str:
    """The sanitized HTML body to post (_extract_body), its own lines shielded from Odoo's quote
    marks (shield_from_odoo_quote_marks)."""
    return shield_from_odoo_quote_marks(_extract_body(message, files, refused))


def _extract_body(message: ParsedMessage, files: list[Attachment] | None = None,
                  refused: Sequence[str] = ()) -> str:
    """The sanitized HTML body to post, or EmptyBody if nothing readable is left above the quote.

    The quoted history and the signature are trimmed before the readability check, so that a
    reply holding only a quote is refused (issue 3); what was trimmed follows in a collapsed
    <details> block. A message forwarded inline with nothing written above it is filed as the
    forwarded message itself (see quotes.is_forward). ``files`` are the attachments that will be
    filed (after the rules), by default all of the message's. A message with no text but Outlook's
    winmail.dat is OutlookTnefOnly; one with no text but encrypted files is EncryptedMessage, and
    one with no text but files in an unknown transfer encoding UnknownTransferEncoding. ``refused``
    names the files the rules left out, each with why (attachments.RefusedFile): a message with no
    text and no file left is OnlyRefusedFiles, naming them, rather than EmptyBody.

    When the HTML part's own part is empty and the plain part's is not, the plain part is filed,
    and what was trimmed of the HTML follows it, collapsed, unless the plain part holds its words
    (it was lost until a review of silent content loss: "As the manual wrote:" above a blockquote
    trimmed everything the sender wrote, and the plain part was "(html)"). A plain part that is a
    stub (_is_stub) is no text of the sender's: the HTML is filed, as if it came alone but for the
    refusal of a quote only (what it trimmed, collapsed).
    """
    if message.encryption:
        raise EncryptedMessage(message.encryption)
    if message.opaque_signed:
        raise OpaqueSignedMessage()
    fallback = None
    # The text of what was trimmed of the first candidate with no readable text of its own.
    fallback_text = None
    # A plain part was only a stub beside that candidate: what the candidate trimmed is filed instead.
    stub = False
    forwarded = None
    forward_subject = is_forward_subject(message.subject)
    files = message.attachments if files is None else files
    for split in _candidate_splits(message):
        # Between the costly steps: quote splitting, sanitizing, the readability checks.
        check_deadline()
        kept = sanitize_html(split.kept)
        # An image whose file is not filed is text (point_images_at_files); it is no text of the
        # sender's, so readability is judged without it: a pasted screenshot the rules refused,
        # sent alone, is refused for its file (OnlyRefusedFiles below).
        body = strip_trailing_blanks(point_images_at_files(kept, files, message.attachments))
        shown = point_images_at_files(kept, files, message.attachments, placeholder=False)
        check_deadline()
        trimmed = sanitize_html(split.trimmed).strip() if split.trimmed else ""
        readable_trimmed = bool(trimmed) and is_readable(
            point_images_at_files(trimmed, files, message.attachments, placeholder=False))
        trimmed = point_images_at_files(trimmed, files, message.attachments)
        check_deadline()
        details = f"<details><summary>{TRIMMED_SUMMARY}</summary>\n{trimmed}\n</details>" \
            if readable_trimmed else ""
        # nh3 parses the body once for its text: readability and the inline-PGP check share it.
        text = visible_text(shown)
        if is_readable(shown, text):
            if is_inline_pgp(shown, text):
                # Mailvelope, mutt and others encrypt the text itself: what is kept is ciphertext.
                raise EncryptedMessage("inline PGP")
            if fallback:
                # The HTML part kept nothing readable and trimmed something: the plain part wins, and
                # what the HTML trimmed (the sender's text, if the split misjudged it) is not dropped.
                own = text if not readable_trimmed else f"{text}\n{visible_text(trimmed)}"
                if _is_stub(own, fallback_text):
                    stub = True
                    continue
                if not _holds(own, fallback_text):
                    details = f"{details}\n{fallback}" if details else fallback
            return f"{body}\n{details}" if details else body
        if fallback is None:
            fallback = details
            fallback_text = visible_text(trimmed) if readable_trimmed else ""
        if forwarded is None and readable_trimmed and quotes.is_forward(trimmed, forward_subject):
            forwarded = strip_trailing_blanks(trimmed)
    # Forwarding a customer's email into a record is filing it: the forwarded text is the note,
    # shown in full rather than collapsed, since there is nothing else to show.
    if forwarded:
        return forwarded
    if stub:
        return fallback
    filed = [attachment for attachment in files if not attachment.inline]
    # An encrypted message to which an outbound gateway added a disclaimer footer, or a list its
    # footer (multipart/mixed of the encrypted entity and a text of the footer only), is encrypted
    # as much as one without: filed, it was the footer and a ciphertext file (a MIME review). The
    # same holds for a message whose only files are in a transfer encoding the gateway cannot undo.
    if filed and all(attachment.encryption or attachment.unknown_encoding for attachment in filed):
        encrypted = [attachment.encryption for attachment in filed if attachment.encryption]
        if encrypted:
            raise EncryptedMessage(encrypted[0])
        raise UnknownTransferEncoding(filed[0].unknown_encoding)
    # Exchange sends a message whose text and files are all in Outlook's winmail.dat (TNEF), which is
    # not decoded: filed, it was an empty note with an opaque file. Beside a text part it is only
    # the files' wrapper, and the text is filed with it as any file.
    if not fallback and any(_is_tnef(attachment) for attachment in message.attachments):
        raise OutlookTnefOnly()
    # A file sent on its own (a forwarded message, a scan, a phone's photo) is what the author
    # meant to file; an inline image is not, since clients put logos and quoted pictures inline.
    if filed:
        return fallback or ""
    # Its files were what the sender meant to file, and the rules refused them all: that is what the
    # sender must hear, not "write above the quoted text" (found by a review of misleading refusals).
    if refused:
        raise OnlyRefusedFiles("; ".join(refused))
    raise EmptyBody()
