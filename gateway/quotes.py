"""Split a reply into what its author wrote and the quoted history and signature below it (issue 3)."""

from __future__ import annotations

import bisect
import html
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass

import lxml.html
from lxml import etree
from mailparser_reply import EmailReplyParser
from mailparser_reply.parser import EmailMessage

from gateway.deadlines import check_deadline
from gateway.refusals import HtmlNestedTooDeep

# The attribution line a client writes above a quote, in the languages issue 3 names (and the
# others mail-parser-reply knows for plain text). Matched against one line, or two joined, since
# clients wrap long attributions.
_ATTRIBUTION = re.compile(
    r"""^\s*(?:
        On\s.+\swrote\s*: |                                 # en (Gmail, Apple Mail, Thunderbird)
        Le\s.+\sa\s+[ée]crit\s*: |                          # fr
        Am\s.+\sschrieb\s.*: |                              # de
        .+\sschrieb\s*: |                                   # de (Thunderbird: "Bob schrieb:")
        El\s.+\sescribi[óo]\s*: |                           # es
        Il\s.+\sha\s+scritto\s*: |                          # it
        Op\s.+\s(?:schreef|geschreven)\s.*: |               # nl
        .+\sschreef\s*: |                                   # nl
        Em\s.+\sescreveu\s*: |                              # pt
        .+\s(?:wrote|a\s+écrit|escribió|ha\s+scritto|escreveu)\s*: |
        \d{4}年\s*\d{1,2}月\s*\d{1,2}日.+[:：] |             # ja (Gmail: date, name, address)
        .+(?:のメッセージ|は書きました|さんは書きました|が書きました)\s*[:：]?  # ja (Outlook, Thunderbird)
    )\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
# The attribution lines Gmail, Apple Mail and Thunderbird write in the languages _ATTRIBUTION and
# mail-parser-reply do not know (Polish, Czech, Finnish, Turkish, Russian, Chinese, Apple Mail's
# Dutch and Japanese), and the Swedish, Danish and Norwegian ones that the library finds in plain
# text only. Each is the client's own wording: its opening or the words around the date, a time
# (HH:MM or HH.MM) and, where the client writes one, the address, up to its "wrote:" (Gmail's Russian
# has none: the address ends the line). So a sentence that merely ends in "pisze:" or mentions a date
# is no attribution. Each branch has one lazy stretch of at most 200 characters (the name) between
# fixed words and is tried only on a line of at most _ATTRIBUTION_MAX_LENGTH characters ending in a
# colon (_matches_attribution): matching costs time linear in the line.
_TIME = r"\d{1,2}[:.]\d{2}"
_ADDRESS = (r"(?:<[^<>\s@]{1,64}@[^<>\s@]{1,255}>|\(<?[^()<>\s@]{1,64}@[^()<>\s@]{1,255}>?\)"
            r"|\[mailto:[^\[\]\s@]{1,64}@[^\[\]\s@]{1,255}\])")
_NAME = r".{1,200}?"
_DATE = r"\d[^\n:]{0,30}?"  # a date as the client's locale writes it: "7.12.2026", "3. nov. 2025", "2026-12-07"
_I18N_ATTRIBUTION = re.compile(
    rf"""(?:
        # pl: Gmail "pon., 3 lis 2025 o 10:02 Jan <jan@example.pl> napisał(a):", Thunderbird "W dniu
        # 7.12.2026 o 10:15, Jan pisze:" (or "napisał:"), Apple Mail "Wiadomość napisana przez Jan
        # <jan@example.pl> w dniu 7 gru 2026, o godz. 10:15:"
        (?:(?:pon|wt|śr|czw|pt|sob|niedz)\.,\s+)?\d{{1,2}}\s+\w{{3,4}}\.?\s+\d{{4}}\s+o\s+{_TIME}\s+{_NAME}\s*{_ADDRESS}\s+napisał\(a\)
        | W\s+dniu\s+(?:\w{{2,5}}\.?,?\s+)?{_DATE}\s+o\s+{_TIME},\s+{_NAME}\s+(?:pisze|napisał(?:\(a\)|a)?)
        | Wiadomość\s+napisana\s+przez\s+{_NAME}\s+w\s+dniu\s+{_DATE},?\s+o\s+godz\.\s*{_TIME}
        # cs: Gmail "po 3. 11. 2025 v 10:02 odesílatel Jan <jan@example.cz> napsal:", Thunderbird and
        # Apple Mail "Dne 7. 12. 2026 v 10:15 Jan napsal(a):"
        | (?:(?:po|út|st|čt|pá|so|ne)\s+)?\d{{1,2}}\.\s*\d{{1,2}}\.\s*\d{{4}}\s+v\s+{_TIME}\s+odesílatel\s+{_NAME}\s+napsal
        | Dne\s+{_DATE}\s+v\s+{_TIME},?\s+{_NAME}\s+napsal(?:\(a\)|a)?
        # fi: Gmail "ma 3.11.2025 klo 10.02 Jan (jan@example.fi) kirjoitti:", Thunderbird "Jan kirjoitti
        # 7.12.2026 klo 10.15:", Apple Mail "Jan <jan@example.fi> kirjoitti 7.12.2026 kello 10.15:"
        | (?:(?:ma|ti|ke|to|pe|la|su)\s+)?{_DATE}\s+klo\s+{_TIME}\s+{_NAME}\s*{_ADDRESS}\s+kirjoitti
        | {_NAME}\s+kirjoitti\s+\d{{1,2}}\.\s?\d{{1,2}}\.\s?\d{{2,4}}(?:\s+(?:klo|kello))?\s+{_TIME}
        # sv, da, nb: Gmail "Den mån 3 nov. 2025 kl 10:02 skrev Jan <jan@example.se>:", Apple Mail
        # "3 nov. 2025 kl. 10:02 skrev Jan <...>:", Thunderbird "Den 2026-12-07 kl. 10:15, skrev Jan:"
        | (?:Den\s+)?(?:\w{{2,4}}\.?\s+)?{_DATE}\s+(?:kl\.?\s+)?{_TIME},?\s+skrev\s+{_NAME}
        # nl: Apple Mail "Op 3 nov. 2025 om 10:02 heeft Jan <jan@example.nl> het volgende geschreven:"
        | Op\s+{_DATE}\s+om\s+{_TIME}\s+heeft\s+{_NAME}\s+het\s+volgende\s+geschreven
        # tr: Gmail "3 Kas 2025 Pzt 10:02 tarihinde Jan <jan@example.com.tr> şunu yazdı:", Thunderbird
        # "7.12.2026 10:15 tarihinde Jan yazdı:", Apple Mail "3 Kas 2025 tarihinde 10:02 saatinde, Jan
        # <...> şunları yazdı:"
        | {_DATE}\s+{_TIME}\s+tarihinde,?\s+{_NAME}\s+(?:şunu\s+)?yazdı
        | {_DATE}\s+tarihinde\s+{_TIME}\s+saatinde,?\s+{_NAME}\s+şunları\s+yazdı
        # ru: Gmail "пн, 3 нояб. 2025 г. в 10:02, Иван <ivan@example.ru>:", Apple Mail "3 нояб. 2025 г., в
        # 10:02, Иван <...> написал(а):", Thunderbird "07.12.2026 10:15, Иван пишет:"
        | (?:(?:пн|вт|ср|чт|пт|сб|вс),\s+)?\d{{1,2}}\s+\w{{3,5}}\.?\s+\d{{4}}\s+г\.\s+в\s+{_TIME},\s+{_NAME}\s*{_ADDRESS}
        | \d{{1,2}}\s+\w{{3,5}}\.?\s+\d{{4}}\s+г\.,?\s+в\s+{_TIME},\s+{_NAME}\s+написал(?:\(а\)|а)?
        | \d{{1,2}}\.\d{{1,2}}\.\d{{2,4}}\s+{_TIME},\s+{_NAME}\s+пишет
        # ja: Apple Mail "2025/11/03 10:02、Bob <bob@example.jp>のメール:"
        | \d{{4}}/\d{{1,2}}/\d{{1,2}}\s+{_TIME}、{_NAME}のメール
        # zh: Gmail "Bob <bob@example.cn> 于2025年11月3日周一 10:02写道：" (zh-TW "於 ... 上午10:02寫道："),
        # Thunderbird "在 2026/12/7 10:15, Bob 写道:" and "Bob 於 2026/12/7 10:15 寫道:"
        | {_NAME}\s*{_ADDRESS}\s*[于於]\s*\d{{4}}年\d{{1,2}}月\d{{1,2}}日[^\n:：]{{0,12}}?{_TIME}\s*[写寫]道
        | 在\s*{_DATE}\s+{_TIME},?\s*{_NAME}\s*写道
        | {_NAME}\s+於\s*{_DATE}\s+{_TIME}\s*寫道
    )\s*[:：]\s*\Z""",
    re.IGNORECASE | re.VERBOSE,
)
# No client writes an attribution longer than this (a long name, an address, a date); a longer line
# is prose, and is not matched against the patterns above (which then cost time linear in it: the
# HTML side reads at most this much of a block, _short_text).
_ATTRIBUTION_MAX_LENGTH = 400


def _matches_attribution(text: str) -> bool:
    """True if ``text`` (a line, two joined, or an HTML block's text) is an attribution line.

    Every form ends in a colon but _ATTRIBUTION's Japanese Outlook and Thunderbird ones, which hold
    "のメッセージ" or "書きました": one look at the end spares most lines the long patterns (the HTML
    side asks this of every block of text, the plain side of every line with a colon). Runs of spaces
    count as one, as in HTML (_short_text): the patterns' spaces next to their stretches of any
    character let a line of spaces be read many ways, and 400 of them cost ~40 ms a line.
    """
    stripped = text.rstrip()
    if not stripped.endswith((":", "：")) and "のメッセージ" not in stripped and "書きました" not in stripped:
        return False
    if len(stripped) > 2 * _ATTRIBUTION_MAX_LENGTH + 1:  # two lines joined: longer is prose, whatever its spaces
        return False
    stripped = " ".join(stripped.split())
    if len(stripped) > _ATTRIBUTION_MAX_LENGTH:
        return False
    if not stripped.endswith((":", "：")):
        return _ATTRIBUTION.match(stripped) is not None
    return _ATTRIBUTION.match(stripped) is not None or _I18N_ATTRIBUTION.match(stripped) is not None


# The line a client puts above a message it forwards inline, and above nothing else: Gmail's
# "---------- Forwarded message ---------", Thunderbird's "-------- Forwarded Message --------",
# mutt's "----- Forwarded message from Bob <bob@example.org> -----" and Apple Mail's "Begin forwarded
# message:", in the languages these clients write them in. Outlook writes no such line: its forward
# and its reply both start with "-----Original Message-----" or a "From: ... Sent: ..." block.
# mutt's sender ends in a character that is no dash: "from .+" read the dashes that close the line
# into the name, and tried the closing dashes at each of them, so a line of 16 KB of dashes took 5 s.
_FORWARD_MARKER = re.compile(
    r"^\s*(?:"
    r"-{2,}\s*(?:Forwarded\s+message(?:\s+from\s(?:.*?[^\s-])?)?|Weitergeleitete\s+Nachricht|Message\s+transf[ée]r[ée]|"
    r"Mensaje\s+reenviado|Messaggio\s+inoltrato|Doorgestuurd\s+bericht|Mensagem\s+encaminhada|"
    r"Vidarebefordrat\s+meddelande|Videresendt\s+(?:meddelelse|melding)|転送メッセージ|转发的邮件)\s*-{2,}"
    r"|(?:Begin\s+forwarded\s+message|Anfang\s+der\s+weitergeleiteten\s+Nachricht|"
    r"D[ée]but\s+du\s+message\s+r[ée]exp[ée]di[ée]|Inicio\s+del\s+mensaje\s+reenviado|"
    r"Inizio\s+messaggio\s+inoltrato|Begin\s+doorgestuurd\s+bericht|"
    r"(?:In[íi]cio|Come[çc]o)\s+da\s+mensagem\s+(?:re)?encaminhada|転送されたメッセージ)\s*[:：]"
    r")\s*$",
    re.IGNORECASE,
)
# Separators that Outlook, Thunderbird and others put above a quoted or forwarded message: Outlook's
# "-----Original Message-----" in the languages of the header block below.
_SEPARATOR = re.compile(
    r"^\s*-{2,}\s*(?:Original\s+Message|Forwarded\s+message|Ursprüngliche\s+Nachricht|Message\s+d'origine|"
    r"Message\s+transféré|Mensaje\s+original|Messaggio\s+originale|Oorspronkelijk\s+bericht|"
    r"Mensagem\s+original|Wiadomość\s+oryginalna|Ursprungligt\s+meddelande|Oprindelig\s+meddelelse|"
    r"Opprinnelig\s+melding|Alkuperäinen\s+viesti|Původní\s+zpráva|Özgün\s+ileti|Исходное\s+сообщение|"
    r"元のメッセージ|転送メッセージ|原始邮件|原始郵件)\s*-{2,}\s*$"
    f"|{_FORWARD_MARKER.pattern}",
    re.IGNORECASE,
)
# The line of underscores Outlook on the web and Outlook for Mac write above the header block in
# the plain-text part. Only a rule followed by a header block starts a quote.
_OUTLOOK_RULE = re.compile(r"^\s*_{10,}\s*$")
# Outlook's header block: "From: ..." followed within two lines by "Sent: ..." (or "Date: ...", as
# Outlook for Mac writes it), and in plain text then by "To:" or "Subject:" (_is_outlook_block), in the language of the sender's Outlook: en, fr ("De :", "Envoyé :"),
# de, es, it, nl, pt, sv, da and nb ("Fra:", "Sendt:"), pl ("Od:", "Wysłane:" or "Wysłano:"), cs
# ("Od:", "Odesláno:"), fi ("Lähettäjä:", "Lähetetty:"), tr ("Kimden:", "Gönderildi:"), ru ("От:",
# "Отправлено:"), ja ("差出人:", "送信日時:"), zh ("发件人:", "发送时间:"; "寄件者:", "寄件日期:"), and, as
# found in the clients' own text (a stripping review found these blocks filed as the author's
# words): hu ("Feladó:", "Elküldve:" or "Dátum:", "Címzett:", "Tárgy:"), ko ("보낸 사람:", "보낸 날짜:",
# "받는 사람:", "제목:", mail-parser-reply's Korean block), el ("Από:", "Στάλθηκε:", "Προς:", "Θέμα:", an
# Outlook.com reply), ro ("De la:", "Trimis:" or "Dată:", "Către:", "Subiect:") and uk ("Від:",
# "Відправлено:", "Кому:", "Тема:"). Outlook's blocks in languages not listed (Arabic, Hebrew,
# Vietnamese, ...) are known in HTML by their markup alone (_outlook_header_container).
_HEADER_FROM = re.compile(
    r"^\s*\**(?:From|De|Von|Da|Van|Fra|Från|Od|Lähettäjä|Kimden|От|差出人|发件人|寄件者|Feladó|보낸\s?사람|Από"
    r"|De\s+la|Від)\s*\**\s*[:：]",
    re.IGNORECASE)
_SENT_WORDS = (r"Sent|Envoyé|Gesendet|Enviado|Inviato|Verzonden|Skickat|Sendt|Wysłane|Wysłano|Odesláno|Lähetetty"
               r"|Gönderildi|Отправлено|送信日時|发送时间|寄件日期|Elküldve|보낸\s?날짜|Στάλθηκε|Trimis|Відправлено")
_HEADER_SENT = re.compile(
    rf"^\s*\**(?:{_SENT_WORDS}|Date|Datum|Fecha|Data|Dato|Päivämäärä|Tarih|Дата|日付|日期|Dátum|Dată)\s*\**\s*[:：]",
    re.IGNORECASE,
)
# The block's "To:" or "Subject:" line, which Outlook writes below "Sent:" in every language above.
_HEADER_TO_OR_SUBJECT = re.compile(
    r"^\s*\**(?:To|À|An|Para|A|Aan|Till?|Do|Komu|Vastaanottaja|Kime|Кому|宛先|收件人|收件者|Címzett|받는\s?사람|Προς|Către"
    r"|Subject|Objet|Betreff|Asunto|Oggetto|Onderwerp|Assunto|Ämne|Emne|Temat|Předmět|Aihe|Konu|Тема|件名|主题|主旨"
    r"|Tárgy|제목|Θέμα|Subiect)"
    r"\s*\**\s*[:：]",
    re.IGNORECASE,
)
# In an HTML header block the lines are separated by <br>, which adds no text: "From: BobSent: ..."
# has no word boundary before "Sent", so none is required. "Date:" is left out ("Update:"): a
# block with it is known by the label starting a piece of text of its own (_is_header_block).
_HEADER_SENT_ANYWHERE = re.compile(rf"(?:{_SENT_WORDS})\s*\**\s*[:：]", re.IGNORECASE)
# What mobile clients and webmail apps append below the text: a closing, not part of the note. A
# device name is one to four words ("iPhone", "Samsung Galaxy smartphone.", "T-Mobile 5G Device"),
# or a carrier and a device ("Verizon, Samsung Galaxy smartphone"); an app is named from a short list
# ("Sent from Yahoo Mail on Android", "Sent with Proton Mail secure email."), since "Sent from the
# warehouse on Monday" is a person writing. A line of a person's can still read like a closing ("Sent
# from my desk."): only the last lines of the author's text are taken as one (_before_closings), so
# the text below such a line is never trimmed with it (a MIME review found the closings above left in
# the note). Every repetition is bounded and the words hold no space: matching a line costs time
# linear in its length.
_WORD = r"[\w'’&+-]+"
_DEVICE = (rf"(?:{_WORD}\s+){{0,3}}{_WORD}"
           rf"|{_WORD},\s+(?:{_WORD}\s+){{0,2}}(?:smartphone|phone|device|tablet)")
_APP = (r"(?:Mail|Outlook|Gmail|Yahoo\s+Mail|Proton\s*Mail|AOL(?:\s+Mobile)?\s+Mail|Spark|BlueMail"
        r"|Edison\s+Mail|Samsung\s+(?:Email|Mail|Mobile)|Xfinity\s+Connect|Zoho\s+Mail|Mailspring)")
# The app, then what some append: "for iOS", "on Android", "pour Android", "Mobile", "secure email".
_APP_TAIL = rf"{_APP}(?:\s+(?:for|on|auf|für|pour|sur|para|en|per|su|voor|op|för|på|dla|na))?(?:\s+{_WORD}){{0,2}}"
_MOBILE_CLOSING = re.compile(
    r"^\s*(?:"
    rf"Sent\s+from\s+my\s+(?:{_DEVICE})|Sent\s+(?:from|with|using|via)\s+{_APP_TAIL}|Get\s+Outlook\s+for\s+\w+"
    rf"|Sent\s+via\s+the\s+(?:{_WORD},?\s+){{1,8}}(?:smartphone|phone|device|tablet)"  # AT&T
    rf"|Von\s+meinem\s+(?:{_DEVICE})\s+gesendet|Gesendet\s+(?:von|mit)\s+(?:meinem\s+(?:{_DEVICE})|{_APP_TAIL})"
    rf"|Envoy[ée]\s+(?:de|depuis|à\s+partir\s+de)\s+(?:mon\s+(?:{_DEVICE})|{_APP_TAIL})"
    rf"|Enviado\s+desde\s+(?:mi\s+(?:{_DEVICE})|{_APP_TAIL})|Enviado\s+do\s+(?:meu\s+(?:{_DEVICE})|{_APP_TAIL})"
    rf"|Inviato\s+da\s+\w+|Inviato\s+dal\s+mio\s+(?:{_DEVICE})"
    rf"|(?:Verstuurd|Verzonden)\s+(?:vanaf|met)\s+(?:mijn\s+(?:{_DEVICE})|{_APP_TAIL})"
    rf"|(?:Skickat|Sendt)\s+från\s+min\s+(?:{_DEVICE})|Sendt\s+fra\s+min\s+(?:{_DEVICE})"
    rf"|Wys[łl]an[eo]\s+z\s+(?:mojego\s+(?:{_DEVICE})|{_WORD})"
    r"|\w+から送信"
    # Outlook's plain text follows its closing with the link of its HTML: "Get Outlook for iOS<https://aka.ms/x>".
    r")\.?(?:\s*<https?://[^\s<>]{1,200}>)?\s*$",
    re.IGNORECASE,
)
# RFC 3676 section 4.3: the signature starts below a line "-- ", two dashes and a space. Many
# editors strip trailing spaces, so a bare "--" line may be one too, but it is also what people write
# between a heading and a list, or in a table: it counts only if what follows it (up to a quote or
# the end) is no longer than a signature. Below either, a list or a report's "Label: value" line
# opening what follows is the author's text, which no signature starts with (_looks_like_signature).
# Until 2026-12 any "--" line was a delimiter, and the author's list or results below it went into
# the collapsed block (a stripping review).
_SIGNATURE_DELIMITER = re.compile(r"^--[ \u00a0]$")
_BARE_DELIMITER = "--"
# What is above a forwarded message, its lines stripped (is_forward): either delimiter.
_ANY_SIGNATURE_DELIMITER = re.compile(r"^--[ \u00a0]?$")
# A signature is a few lines: RFC 1855 asks for at most four, business ones run to eight.
_SIGNATURE_MAX_LINES = 8
# A line of a list ("1. pump ok", "2) valve", "- seal", "• seal") or a report's "Label: value" line
# opening what follows: the author's text, not a signature (which opens with a name or a closing).
_LIST_ITEM = re.compile(r"^\s*(?:\d{1,3}[.)]|[-*•·–]\s)")
_LABEL_LINE = re.compile(r"^\s*[^\s:/][^:/]{0,30}:\s+\S")


def _looks_like_signature(lines: list[str], *, bare: bool) -> bool:
    """True if the lines below a "--" line (up to a quote or the end) can be a signature: none an
    item of a list, the first no "Label: value" line, and below a ``bare`` "--" (no space) at most
    _SIGNATURE_MAX_LINES of text."""
    text = [line for line in lines if line.strip()]
    if bare and len(text) > _SIGNATURE_MAX_LINES:
        return False
    if text and _LABEL_LINE.match(text[0]):
        return False
    return not any(_LIST_ITEM.match(line) for line in text)

# Outlook (desktop, on the web) marks no quote it answers inline: its header block looks the same
# above a quote answered inline ("see my answers below in red") as above one left whole. The author's
# text above it says so, in words that pair the author's own answers with where they are ("my answers
# below", "answers inline", "comments in red", "meine Antworten unten", "mes réponses ci-dessous"), or
# each answer opens with Outlook's "Preface comments with" marker, the author's name in brackets
# ("[Paula] 4.2 bar"). "See below" alone is no such sign: top-posted replies and forwards say it of
# the whole quote; nor are someone else's words pointed at ("see the customer's comments below",
# "Carl's notes below", "Anmerkungen des Kunden unten", a review: the whole quoted thread was filed
# as the sender's text). In doubt the quote is collapsed: nothing is lost, it is in the collapsed
# block. Each stretch between the words is bounded and holds no sentence end: matching costs time
# linear in the text.
_ANSWER_WORDS = (r"answers?|answered|repl(?:y|ies|ied)|responses?|comments?|notes|remarks|Antworten|Anmerkungen"
                 r"|Kommentare|r[ée]ponses?|commentaires?|respuestas?|comentarios?|risposte|commenti|antwoorden"
                 r"|opmerkingen|respostas|coment[áa]rios|odpowiedzi|komentarze|odpov[ěe]di|svar|kommentarer|vastaukset")
# Where words that only answers typed into the quote are ("inline", "in red", "im Text"), and the
# others ("below", "unten"), which a top-posted reply also says of the quote.
_INLINE_WHERE_WORDS = (r"inline|in-line|in\s+(?:red|blue|green|bold)|im\s+Text|in\s+(?:rot|blau|gr[üu]n)"
                       r"|dans\s+le\s+texte|en\s+(?:rouge|bleu|vert|rojo|azul|verde)|entre\s+l[íi]neas"
                       r"|in\s+(?:rosso|blu)|in\s+het\s+(?:rood|blauw)|em\s+(?:vermelho|azul)")
_WHERE_WORDS = (rf"below|{_INLINE_WHERE_WORDS}|unten|ci-dessous|abajo|debajo|sotto|di\s+seguito|hieronder|abaixo"
                r"|poni[żz]ej|n[íi][žz]e|nedan|nedenfor|alla")
# The author's own: "my answers", "our inline comments", "meine Antworten", "mes réponses", ...
_OWN_WORDS = (r"my|our|meine|unsere|mes|nos|mis|nuestras|nuestros|mie|miei|mijn|onze|minhas|meus|moje|nasze"
              r"|mina|mine|mitt|vores|minun|mé|naše")
_ANSWER_WORD = re.compile(rf"\b(?:{_ANSWER_WORDS})\b", re.IGNORECASE)
# What may follow an answer word up to where the answers are.
_TO_WHERE = re.compile(rf"[^.!?\n]{{0,40}}?(?<!\w)(?:{_WHERE_WORDS})(?!\w)", re.IGNORECASE)
_TO_INLINE_WHERE = re.compile(rf"[^.!?\n]{{0,40}}?(?<!\w)(?:{_INLINE_WHERE_WORDS})(?!\w)", re.IGNORECASE)
# Right before an answer word: the author's own possessive (an adjective may come between).
_OWN_BEFORE = re.compile(rf"(?<!\w)(?:{_OWN_WORDS})\s+(?:[^\W\d_]+\s+)?$", re.IGNORECASE)
# Right before an answer word: someone else's ("the customer's", "Carl's", "his", "ihre", "ses"), an
# adjective may come between.
_OTHERS_BEFORE = re.compile(
    r"(?:[^\W\d_]['’]s?|(?<!\w)(?:his|her|their|your|its|ihre|seine|deine|eure|ihrer|seiner|ses|leurs|tes|vos|sus|tus"
    r"|sue|suoi|zijn|haar|hun|uw|jouw|seus|suas|jego|jej|ich|hans|hennes|deras|hendes|hänen))\s+(?:[^\W\d_]+\s+)?$",
    re.IGNORECASE)
# A determiner right before an answer word ("see the comments below"): whose they are is not said.
_DETERMINER_BEFORE = re.compile(
    r"(?<!\w)(?:the|these|those|some|die|den|der|diese|les|la|le|ces|los|las|el|estos|il|i|gli|de|het|deze|os|as|o|a"
    r"|disse)\s+(?:[^\W\d_]+\s+)?$", re.IGNORECASE)
# Right after an answer word: whose they are ("Anmerkungen des Kunden", "comments from Carl",
# "commentaires du client", "comentarios del cliente", "opmerkingen van de klant").
_OTHERS_AFTER = re.compile(r"\s+(?:des|der|vom|von|du|de|del|della|dello|dei|delle|van|of|from|by|do|da|dos|das)\b",
                           re.IGNORECASE)
# The announcements that name the author themselves: "below are my answers", "unten meine Antworten",
# "I answered inline", "I've replied below", "see inline", "see below in red".
_OWN_ANNOUNCEMENT = re.compile(
    rf"(?<!\w)(?:{_WHERE_WORDS})(?!\w)[^.!?\n]{{0,20}}?\b(?:are\s+|sind\s+|sont\s+)?(?:{_OWN_WORDS}|le\s+mie|as\s+minhas)"
    rf"\s+(?:{_ANSWER_WORDS})\b"
    rf"|\b(?:i|we)(?:['’]ve|\s+have)?\s+(?:answered|replied|responded|commented)\b[^.!?\n]{{0,40}}?(?<!\w)(?:{_WHERE_WORDS})(?!\w)"
    rf"|\bsee\s+(?:inline|in-line|below\s+in\s+(?:red|blue|green))\b",
    re.IGNORECASE,
)
# Outlook's "Preface comments with:" marker: a name in brackets (at most a few words).
_PREFACE = re.compile(r"\[([^\[\]\n]{1,60})\]")
# How much text around an Outlook header block is read for these signs.
_INLINE_SIGNS_MAX_CHARS = 64 * 1024


# Each announcement holds one of these (lowercased): the pattern is tried only around them, since
# its alternations tried at every position cost ~0.5 ms for 4 KB of text, on every Outlook reply.
_WHERE_HINTS = ("below", "inline", "in-line", "in red", "in blue", "in green", "in bold", "unten", "im text",
                "in rot", "in blau", "in grün", "in grun", "dessous", "dans le texte", "en rouge", "en bleu",
                "en vert", "en rojo", "en azul", "en verde", "abajo", "debajo", "entre l", "sotto", "di seguito",
                "in rosso", "in blu", "hieronder", "in het r", "in het b", "abaixo", "em vermelho", "em azul",
                "poniżej", "ponizej", "níže", "nize", "niže", "nedan", "nedenfor", "alla")
# How far from such a word the rest of an announcement can be (the pattern's stretches and words).
_ANNOUNCEMENT_REACH = 80


def _announces_inline(text: str) -> bool:
    """True if the author's text above an Outlook quote says that the author's answers are written in it."""
    lowered = text[:_INLINE_SIGNS_MAX_CHARS].lower()
    if not any(hint in lowered for hint in _WHERE_HINTS):
        return False
    # Every announcement but "see inline" holds an answer word: they are found once, and each is
    # read once (the windows around close hints overlap; reading each window cost 0.7 s for 64 KB).
    words = list(_ANSWER_WORD.finditer(lowered))
    starts = [word.start() for word in words]
    checked: set[int] = set()
    for hint in _WHERE_HINTS:
        position = lowered.find(hint)
        while position >= 0:
            start = max(0, position - _ANNOUNCEMENT_REACH)
            end = position + len(hint) + _ANNOUNCEMENT_REACH
            first, last = bisect.bisect_left(starts, start), bisect.bisect_left(starts, end)
            if (first < last or "see" in lowered[start:end]) and _OWN_ANNOUNCEMENT.search(lowered, start, end):
                return True
            for index in range(first, last):
                if index not in checked:
                    checked.add(index)
                    if _announces_own_answers(lowered, words[index]):
                        return True
            position = lowered.find(hint, position + len(hint))
    return False


def _announces_own_answers(text: str, word: re.Match[str]) -> bool:
    """True if the answer word ``word`` in ``text`` (lowercased) announces the author's answers with
    where they are: "my answers below", "answers inline", "Answers below."
    Someone else's ("the customer's comments below", "Anmerkungen des Kunden unten") never, and one
    whose owner is not said ("the comments below") only where nothing but answers can be ("in red")."""
    end = word.end() + _ANNOUNCEMENT_REACH
    if _TO_WHERE.match(text, word.end(), end) is None:
        return False
    sentence_start = max(text.rfind(mark, 0, word.start()) for mark in ".!?\n") + 1
    before = text[max(sentence_start, word.start() - _ANNOUNCEMENT_REACH):word.start()]
    if _OWN_BEFORE.search(before):
        return True
    if _OTHERS_BEFORE.search(before) or _OTHERS_AFTER.match(text, word.end(), end):
        return False
    if _TO_INLINE_WHERE.match(text, word.end(), end):
        return True
    return _DETERMINER_BEFORE.search(before) is None


def _prefaced_by(text: str, author: str) -> bool:
    """True if ``text`` (the quote) holds Outlook's preface marker of the author: "[Paula]", "[Paula
    Contributor]", every word in brackets one of the author's display name's."""
    names = set(author.casefold().replace(",", " ").split())
    if not names:
        return False
    for match in _PREFACE.finditer(text, 0, _INLINE_SIGNS_MAX_CHARS):
        words = match.group(1).casefold().split()
        if words and all(word in names for word in words):
            return True
    return False


def _outlook_inline(before: str, after: str, author: str) -> bool:
    """True if the quote below an Outlook header block holds the author's answers (see above):
    ``after`` is the quoted message only, up to the next one it quotes (_quoted_message_lines)."""
    return _announces_inline(before) or _prefaced_by(after, author)

# mail-parser-reply knows these of the languages issue 3 names; Portuguese is covered by the
# attribution pattern above.
_REPLY_PARSER = EmailReplyParser(languages=["en", "de", "fr", "es", "it", "nl", "ja", "sv", "da", "pl", "cs"])


def _guarded(pattern: re.Pattern[str], start: str) -> re.Pattern[str]:
    """The same pattern behind a lookahead that every one of its branches implies.

    The library's header and signature patterns are long alternations whose branches can only begin
    at a line start (or, for the signature, at whitespace), but the regex engine tries all of them at
    every character: 6.4 ms for 4 KB of text (issue 6). One zero-width assertion in front rejects the
    other positions at once and leaves the matches, groups and their order unchanged.
    """
    return re.compile(f"(?={start})(?:{pattern.pattern})", pattern.flags)


# The library builds and compiles its three patterns for every message it reads; they depend only on
# the languages, so they are built once here and handed to each EmailMessage. Only the header
# pattern decides the latest reply (the first part's text, up to the first header): the signature
# and disclaimer patterns fill other fields of each part, which the gateway never reads, and cost
# ~0.4 ms per 5 KB note (issue 6), so they get a pattern that fails at once.
# tests/test_quotes.py holds _latest_reply to the library's own parse_reply.
_PROTOTYPE = EmailMessage(text="", languages=list(_REPLY_PARSER.languages))
# Anchored, so the engine tries one position: "(?!)" alone is tried at every one (~60 µs per 5 KB).
_NO_MATCH = re.compile(r"\A(?!)")
_PATTERNS = {
    "_header_regex": _guarded(_PROTOTYPE.HEADER_REGEX, r"^|\n"),
    "_signature_regex": _NO_MATCH,
    "_disclaimers_regex": _NO_MATCH,
}


# Every header the library knows ends in a colon ("wrote:", "From: ...", the Japanese date line) or
# is a dashed separator ("-----Original Message-----"); tests/test_quotes.py checks that of each
# pattern it has. A text with neither cannot hold one, and most notes have none.
_HEADER_HINT = re.compile(r"[:：]|-----")
_PATTERNS_NO_HEADER = {**_PATTERNS, "_header_regex": _NO_MATCH}


def _library_read(text: str) -> tuple[str, bool]:
    """mail-parser-reply's latest reply of ``text``, and whether a header split the text in two."""
    patterns = _PATTERNS if _HEADER_HINT.search(text) else _PATTERNS_NO_HEADER
    message = EmailMessage(text=text, languages=list(_REPLY_PARSER.languages), **patterns).read()
    return message.latest_reply or "", len(message.replies) > 1


def _latest_reply(text: str) -> str:
    """mail-parser-reply's latest reply of ``text``: the text above the first header it knows
    ("On ... wrote:", "From: ...", "-----Original Message-----"), in any of its languages."""
    return _library_read(text)[0]


@dataclass(frozen=True)
class Split:
    """The author's own part, and what was trimmed from below it (both HTML)."""

    kept: str
    trimmed: str


# --- Plain text ---------------------------------------------------------------------------------


def _quote_follows(lines: list[str], index: int) -> bool:
    """True if the first non-blank line after ``index`` is quoted: "I wrote:" in the author's own
    text, followed by more of it, is not an attribution."""
    # Indexes, not a slice: a slice copies the rest of the list for every attribution-like line, and
    # 900 KB of "x wrote:" lines took 8 s (a content review).
    for position in range(index + 1, len(lines)):
        if lines[position].strip():
            return _is_quoted(lines[position])
    return False


# Every attribution, separator and header pattern above needs one of these in the line or in the next
# one (joining two lines puts a space between them, so no hint can straddle the join). Most lines have
# none, and one search spares them the long patterns (issue 6: the per-line matching cost ~1 ms for 4 KB).
_ATTRIBUTION_HINT = re.compile(r"[:：]|--|のメッセージ|書きました")


def _is_attribution(lines: list[str], index: int) -> bool:
    line = lines[index].strip()
    if not line:
        return False
    if not _ATTRIBUTION_HINT.search(line) and (
            index + 1 >= len(lines) or not _ATTRIBUTION_HINT.search(lines[index + 1])):
        return False
    if _SEPARATOR.match(line):
        return True
    if _OUTLOOK_RULE.match(line) and index + 1 < len(lines) and _is_attribution(lines, index + 1):
        return True  # Outlook's rule above its "From: ... Sent: ..." block (the <hr> of its HTML)
    if _matches_attribution(line):
        return _quote_follows(lines, index)
    if index + 1 < len(lines):
        following = lines[index + 1].strip()
        if _matches_attribution(f"{line} {following}") and not _matches_attribution(following):
            return _quote_follows(lines, index + 1)
        if _is_outlook_block(lines, index):
            return True
    return False


def _is_outlook_block(lines: list[str], index: int) -> bool:
    """True if an Outlook header block starts at this line: its "From:" line, a "Sent:" (or "Date:")
    line within the next two and a "To:" or "Subject:" line within the next four, as Outlook writes them.
    Looks at five lines at most."""
    return (_HEADER_FROM.match(lines[index]) is not None
            and any(_HEADER_SENT.match(line) for line in lines[index + 1:index + 3])
            and any(_HEADER_TO_OR_SUBJECT.match(line) for line in lines[index + 1:index + 5]))


# A line that mail-parser-reply may take for a line of an Outlook header block: a label ("Od:",
# "Data:", "*From:*"), that is a word and a colon, at its start. Its Polish pattern takes one such
# line for a whole block, its others two ("To: ...", "Subject: ..." of the author's own text).
_LIBRARY_LABEL_LINE = re.compile(r"^[\s*]*[^\W\d_]{1,20}[ *]*[:：]")
# A line that its Danish and Swedish "... skrev ...:" patterns may take for an attribution: they ask
# only for a weekday's first letters or a digit at its start ("Torben skrev til os om pumpen:"). The
# clients' own lines hold a year or a time (Gmail's "Den man. 3. nov. 2025 kl. 10.02 skrev Bob <...>:").
_LIBRARY_SKREV = re.compile(r"\sskrev\s", re.IGNORECASE)
_YEAR_OR_TIME = re.compile(r"\d{4}|\d{1,2}[:.]\d{2}")
# Put in front of such a line, the library's patterns, which start at a line's start, pass it over.
_LIBRARY_MASK = "\ue000"


def _library_mask(lines: list[str], index: int) -> str:
    """The line as mail-parser-reply is to read it: behind _LIBRARY_MASK if the library would take it
    for a header and no client writes it as one (a line already starting with the mask gets one more).

    A Polish line of the author's own starting "Od: ..." ("From Monday ...") or "Data: ..." cut the
    note there: the library's Outlook patterns are accepted only at a block as Outlook writes it
    (_is_outlook_block), its "... skrev ...:" only on a line with a year or a time. Each line is
    looked at with the few that follow it: linear time.
    """
    line = lines[index]
    skrev = _LIBRARY_SKREV.search(line) if line.rstrip().endswith((":", "：")) else None
    if line.lstrip().startswith(_LIBRARY_MASK) or (
            _LIBRARY_LABEL_LINE.match(line) and not _is_outlook_block(lines, index)) or (
            skrev is not None and not _YEAR_OR_TIME.search(line, 0, skrev.start())):
        return _LIBRARY_MASK + line.lstrip()
    return line


# What mail-parser-reply reads in place of lines that can be no part of a header it knows, a run of
# them (blank lines between them included) as one line: the mask, then the run's number, so that
# _end_of_prefix tells the runs apart. At least two characters, as the library's patterns ask for two
# between their fixed words (a line of the author's is at least one).
_LIBRARY_ELIDED = _LIBRARY_MASK + "\ue001{}"
# Each header the library knows holds a colon or "-----" (_HEADER_HINT) on its line or on one of the
# few below it: its "On ...\n...\nwrote:" spans up to four lines, its German one five. A line with
# neither on it nor on the next _LIBRARY_WINDOW lines that are not blank starts none and ends none.
_LIBRARY_WINDOW = 5
# The library's header pattern is one search of the whole text, which holds the interpreter's lock
# throughout: how long it takes is how long every session waits (a review: a 40 KB line froze them
# all for 19 s). Its patterns for "On ... wrote:", "Op ... schreef:", "Dnia ... napisał(a):" and the
# like cost time quadratic in a line (and the two below it) that starts like one and does not end
# like one, so it reads no line longer than _LIBRARY_LINE_MAX_LENGTH (no client writes a header line
# that long; a longer line is elided like prose) and at most _LIBRARY_MAX_CHARS (and one line) of
# them: ~0.1 s at worst. An attribution line is near the top of the text
# anyway; a note whose own text holds more such lines keeps what the library alone would have trimmed.
_LIBRARY_LINE_MAX_LENGTH = 200
_LIBRARY_MAX_CHARS = 16 * 1024


def _library_view(lines: list[str]) -> tuple[list[str], list[int]]:
    """The lines mail-parser-reply is to read, and where each ends in ``lines`` (the index after it).

    A line longer than _LIBRARY_LINE_MAX_LENGTH is prose, and a line far from a colon or "-----" can
    be no part of a header: each is elided, a run of them becoming one line, so the library's search
    (~15 µs for each line start, quadratic in a long line) costs what the few candidate lines do.
    The lines are read up to _LIBRARY_MAX_CHARS.
    """
    count = len(lines)
    near = [False] * count
    distance = _LIBRARY_WINDOW + 1
    for index in range(count - 1, -1, -1):
        line = lines[index]
        if ":" in line or "：" in line or "-----" in line:
            distance = 0
        elif line and not line.isspace():
            distance += 1
        else:
            continue
        near[index] = distance <= _LIBRARY_WINDOW
    view: list[str] = []
    ends: list[int] = []
    size = 0
    elided_at = -1  # the position in view after the last elided run, while only blank lines follow it
    for index, line in enumerate(lines):
        if size >= _LIBRARY_MAX_CHARS:
            break
        stripped = line.strip()
        if not stripped:
            view.append("")  # the library strips every line
            ends.append(index + 1)
            size += 1
            continue
        rule = stripped[0] in "_-" and _LIBRARY_RULE.match(stripped) is not None  # the library drops it
        if (near[index] or rule) and (len(stripped) <= _LIBRARY_LINE_MAX_LENGTH or rule and not stripped.strip("_-")):
            view.append(_library_mask(lines, index))
            ends.append(index + 1)
            size += len(view[-1]) + 1
            elided_at = -1
            continue
        if elided_at >= 0:
            size -= len(view) - elided_at  # the blank lines since the run
            del view[elided_at:], ends[elided_at:]
            ends[-1] = index + 1
            continue
        view.append(_LIBRARY_ELIDED.format(index))
        ends.append(index + 1)
        size += len(view[-1]) + 1
        elided_at = len(view)
    return view, ends


def _is_quoted(line: str) -> bool:
    return line.lstrip().startswith(">")


# Odoo reads a note's body with lxml's default parser (html_sanitize, through lxml's Cleaner), which
# stops at 256 levels as the gateway's did: what the gateway posts nests no deeper than this, and the
# template and the collapsed block add a few levels.
POSTED_MAX_DEPTH = 100


# A quoted line's marks: up to POSTED_MAX_DEPTH of "> " (or ">") after any spaces, as nested
# blockquotes read them one level at a time (RFC 3676 section 4.5).
_QUOTE_MARKS = re.compile(rf"(?:\s*> ?){{1,{POSTED_MAX_DEPTH}}}")


class _Budget:
    """How many more lines plain text may render, blockquotes open and links hold (shared by its parts)."""

    def __init__(self) -> None:
        self.lines = _RENDER_MAX_LINES
        self.blockquotes = _RENDER_MAX_BLOCKQUOTES
        self.links = _RENDER_MAX_LINKS


def _text_blocks_to_html(lines: list[str], budget: _Budget | None = None) -> tuple[str, int]:
    """Plain text as HTML, with runs of "> " lines as blockquotes (RFC 3676 section 4.5), and how
    many of the lines it holds: all, or those before the first that would render more lines, open
    more blockquotes or hold more links than ``budget`` has left.

    Quotes nest as blockquotes down to POSTED_MAX_DEPTH levels, which Odoo reads (see _flatten);
    the ">" marks of deeper ones stay in the text. Each line's level is read once and its marks
    stripped once, and the levels are opened and closed in one pass: a call per level made a copy of
    every line at each level, all alive at once, and 14 MB of 100-level quotes took 1.3 GB (a review).
    """
    from gateway.content import text_to_html  # The one place plain text becomes HTML.

    if budget is None:
        budget = _Budget()
    # Line by line only if the whole would not fit.
    links = _link_hints("\n".join(lines)) if len(lines) <= budget.lines else budget.links + 1
    counted = links > budget.links
    if not counted:
        budget.lines -= len(lines)
        budget.links -= links
    out: list[str] = []
    written = [False]  # for each open level: whether a piece was written in it
    run: list[str] = []
    run_level = 0
    stopped = len(lines)

    def write(piece: str) -> None:
        if written[-1]:
            out.append("\n")
        out.append(piece)
        written[-1] = True

    def flush() -> None:
        while len(written) - 1 > run_level:
            out.append("</blockquote>")
            written.pop()
        while len(written) - 1 < run_level:
            write("<blockquote>")
            written.append(False)
        piece = text_to_html("\n".join(run))
        if piece:
            write(piece)

    for index, line in enumerate(lines):
        if counted:
            links = _link_hints(line)
            if not budget.lines or links > budget.links:
                stopped = index
                break
            budget.lines -= 1
            budget.links -= links
        marks = _QUOTE_MARKS.match(line) if _is_quoted(line) else None
        level = marks.group().count(">") if marks else 0
        if level != run_level:
            if level > run_level:
                if level - run_level > budget.blockquotes:
                    stopped = index
                    break
                budget.blockquotes -= level - run_level
            if run:
                flush()
                run = []
            run_level = level
        run.append(line[marks.end():] if marks else line)
    if run:
        flush()
    out.extend("</blockquote>" * (len(written) - 1))
    return "".join(out), stopped


# What the clients' own attribution lines hold and a sentence of the author's ("The customer wrote:",
# "Le 3 mars, le client a écrit :") does not: a time or an address. The footer rule below applies
# only under a client's attribution: above the author's own quoting, text below the quote is theirs.
_CLIENT_ATTRIBUTION_SIGN = re.compile(r"\d{1,2}[:.]\d{2}|@")
# A greeting alone above the attribution ("Hi Bob,", "Bonjour,") opens a text that goes on below.
_GREETING_MAX_LENGTH = 40


def _top_posted(above: str, attribution: str) -> bool:
    """True if ``above`` (the text above the quote) is a top-posted reply's text under which a client
    wrote ``attribution``: not blank, not a greeting alone, not announcing answers (_announces_inline)."""
    if _CLIENT_ATTRIBUTION_SIGN.search(attribution) is None:
        return False
    lines = [line.strip() for line in above.split("\n") if line.strip()]
    if not lines or len(lines) == 1 and lines[0].endswith(",") and len(lines[0]) <= _GREETING_MAX_LENGTH:
        return False
    return not _announces_inline(above)


def _footer_below_quoted_lines(lines: list[str], start: int, end: int) -> bool:
    """True if the quote at ``start`` is a top-posted reply's, with a footer below it: the author
    wrote above the client's attribution (_top_posted), and after the last quoted line only, nothing
    between quoted lines.

    An outbound gateway's disclaimer or a list's footer lands below the quote; taken for the answer
    of an inline reply, it kept the whole quote in the note (a stripping review).
    """
    if _is_quoted(lines[start]):
        return False
    seen_quote = seen_text = False
    for line in lines[start + 1:end]:
        if _is_quoted(line):
            if seen_text:
                return False  # text between quoted lines: an inline reply
            seen_quote = True
        elif seen_quote and line.strip():
            seen_text = True
    attribution = " ".join(lines[start:start + 2])  # clients wrap a long one over two lines
    return seen_text and _top_posted("\n".join(lines[:start]), attribution)


def _has_own_text_after_quote(lines: list[str], start: int, end: int) -> bool:
    """True if the author answered between quoted lines (an inline reply), before the signature."""
    seen_quote = False
    for line in lines[start:end]:
        if _is_quoted(line):
            seen_quote = True
        elif seen_quote and line.strip():
            return True
    return False


# mail-parser-reply's OUTLOOK_MAIL_SEPARATOR, which it removes from the text it reads.
_LIBRARY_RULE = re.compile(r"^ ?[_-]{32,}")


def _end_of_prefix(lines: list[str], cut: int, own: str) -> int:
    """Where mail-parser-reply's latest reply ``own`` ends in ``lines[:cut]``.

    The latest reply is the start of the text the library read (each line stripped), so its lines
    are matched from the first one on. Searching backwards for its last line found that line inside
    the quote when the author's closing ("Thanks") was repeated there, and filed the quote as the
    note (a content review).
    """
    wanted = [line.strip() for line in own.split("\n") if line.strip()]
    matched = 0
    for index in range(cut):
        line = lines[index].strip()
        if not line:
            continue
        if line != wanted[matched]:
            if _LIBRARY_RULE.match(line):
                continue  # the library drops a rule of underscores or dashes below a blank line
            break
        matched += 1
        if matched == len(wanted):
            return index + 1
    # The library cut a line short (a header pattern matching within it): its last line, searched
    # from the start, is the closest to the text it kept.
    last = wanted[-1]
    return next((index + 1 for index in range(cut) if lines[index].strip() == last), cut)


def _before_closings(lines: list[str], end: int) -> int:
    """The first of the mobile closings that are the last lines of ``lines[:end]`` (blank lines
    between them aside), or ``end`` if the last line is none.

    A closing is only ever the end of what its author wrote: "Sent from my desk." followed by more
    of the author's text is a sentence, and nothing below it is trimmed.
    """
    found = index = end
    while index > 0:
        line = lines[index - 1]
        if line.strip() and not _MOBILE_CLOSING.match(line):
            break
        index -= 1
        if line.strip():
            found = index
    return found


# Plain text is split into the note and its quote line by line, each line a few objects here: 14 MB of
# "a\n" took 1.2 GB (a review). Only its first _TEXT_MAX_LINES lines, at most _TEXT_MAX_CHARS
# characters, are split; what follows is kept as it is after the part they end in (the quote, if any
# was trimmed). Rendered, each line becomes a <br> that the sanitizer (html5ever, through nh3) holds
# as an element of ~350 bytes, and so does each blockquote: 4 MB of lines alternating between no
# quote and 100 levels took 850 MB (a review). Only the first _RENDER_MAX_LINES lines, opening at
# most _RENDER_MAX_BLOCKQUOTES blockquotes, are rendered with links and blockquotes; from the line
# that would exceed either (or hold more links than _RENDER_MAX_LINKS), each part is kept as it is,
# escaped in a <pre> block.
_TEXT_MAX_CHARS = 8 * 1024 * 1024
_TEXT_MAX_LINES = 250_000
_RENDER_MAX_LINES = 20_000
_RENDER_MAX_BLOCKQUOTES = 20_000
# Each link is an element too (~1 KB with its attributes): 2 MB of URLs took 125 MB. Every link
# content.text_to_html makes holds a scheme's colon, an "@" or "www." (_LINK), so their number bounds it.
_RENDER_MAX_LINKS = 20_000


def _link_hints(text: str) -> int:
    """At least the number of links content.text_to_html makes of ``text``."""
    return text.count(":") + text.count("@") + (text.lower().count("www.") if "." in text else 0)


def _head(text: str) -> tuple[str, str]:
    """The first lines of ``text``, which are split and rendered, and what follows them."""
    if len(text) <= _TEXT_MAX_CHARS and text.count("\n") < _TEXT_MAX_LINES:
        return text, ""
    end = -1
    for _ in range(_TEXT_MAX_LINES):
        found = text.find("\n", end + 1, _TEXT_MAX_CHARS + 1)
        if found < 0:
            break
        end = found
    if end < 0:  # the first line alone is longer than the limit
        return text[:_TEXT_MAX_CHARS], text[_TEXT_MAX_CHARS:]
    return text[:end], text[end + 1:]


def _preformatted(text: str) -> str:
    text = text.strip("\n")
    return f"<pre>{html.escape(text, quote=False)}</pre>" if text.strip() else ""


def _joined(*pieces: str) -> str:
    return "\n".join(piece for piece in pieces if piece)


def _starts_outlook_quote(lines: list[str], index: int) -> bool:
    """True if the first non-blank line from ``index`` on starts an Outlook quote: its header block,
    the rule above it or its "-----Original Message-----" line (no forward marker)."""
    while index < len(lines) and not lines[index].strip():
        index += 1
    if index == len(lines):
        return False
    line = lines[index]
    return (_OUTLOOK_RULE.match(line) is not None or _is_outlook_block(lines, index)
            or (_SEPARATOR.match(line) is not None and _FORWARD_MARKER.match(line) is None))


def _quoted_message_lines(lines: list[str], start: int, end: int) -> list[str]:
    """The lines of the message quoted below the Outlook header block at ``start`` (_starts_outlook_quote),
    up to the next message it quotes in turn (its header block, an attribution, quoted lines) or ``end``.

    Only there can the author's "[Name]" answers be: a top-posted reply over a thread in which the
    author once answered inline holds the marker in an older message (a review: the whole thread was
    filed as the author's text)."""
    index = start
    while index < end and not lines[index].strip():
        index += 1
    if index < end and (_OUTLOOK_RULE.match(lines[index]) or _SEPARATOR.match(lines[index])):
        index += 1  # the rule or "-----Original Message-----" line above the block
        while index < end and not lines[index].strip():
            index += 1
    first = index = index + 1  # past the "From:" line, the block's other lines start no message
    while index < end and not _starts_message(lines, index):
        index += 1
    return lines[first:index]


def _is_signature_delimiter(lines: list[str], index: int) -> bool:
    """True if the line is "-- " or a bare "--" with what looks like a signature below it (read up
    to the first quoted line or attribution, and at most one line more than a signature has)."""
    line = lines[index]
    bare = line.rstrip() == _BARE_DELIMITER
    if not bare and not _SIGNATURE_DELIMITER.match(line):
        return False
    below: list[str] = []
    for position in range(index + 1, len(lines)):
        if _starts_message(lines, position):
            break
        if lines[position].strip():
            below.append(lines[position])
            if len(below) > _SIGNATURE_MAX_LINES:
                break
    return _looks_like_signature(below, bare=bare)


def split_text(text: str, author: str = "") -> Split:
    """Split a plain-text body; a top-posted reply loses its quote, an inline reply keeps it.

    ``author`` is the sender's display name, for Outlook's "[Name]" marker of inline answers."""
    text, rest = _head(text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = text.split("\n")
    signature = next((i for i, line in enumerate(lines) if _is_signature_delimiter(lines, i)), len(lines))
    # The closings right above the signature or the end are not answers between quoted lines (the
    # end of the first lines is no end if more follows them).
    if signature < len(lines) or not rest:
        signature = _before_closings(lines, signature)
    # One search of the whole text spares the per-line hint searches when none can match.
    attribution_possible = _ATTRIBUTION_HINT.search(text) is not None
    first_quote = next((i for i, line in enumerate(lines[:signature])
                        if _is_quoted(line) or (attribution_possible and _is_attribution(lines, i))), signature)
    if first_quote < signature and _has_own_text_after_quote(lines, first_quote, signature) \
            and not _footer_below_quoted_lines(lines, first_quote, signature):
        # Answers written between the quoted lines only make sense next to them.
        cut = signature
    else:
        cut = first_quote
        # The library knows more headers than the patterns above (its closings are not asked for:
        # _PATTERNS). It reads the lines that may hold one (_library_view); if they stop short of
        # the cut and hold no header, what follows them is not known to hold none.
        view, ends = _library_view(lines[:cut])
        own, parted = _library_read("\n".join(view))
        own = own.strip("\n")
        if own.strip() and (parted or not ends or ends[-1] == cut):
            cut = ends[_end_of_prefix(view, len(view), own) - 1]
        elif not any(line.strip() for line in lines[:cut]):
            cut = 0
        # A closing above the quote: iOS Mail, Gmail and Samsung's app write it there.
        if cut < len(lines) or not rest:
            cut = _before_closings(lines, cut)
        # Outlook's inline answers below its header block carry no quote marks: the author's words
        # above it, or the answers' "[Name]" marker, tell them from a quote left whole.
        if cut < signature and _starts_outlook_quote(lines, cut) and _outlook_inline(
                "\n".join(lines[:cut]), "\n".join(_quoted_message_lines(lines, cut, signature)), author):
            cut = signature
    while cut > 0 and not lines[cut - 1].strip():
        cut -= 1
    budget = _Budget()
    kept, rendered = _text_blocks_to_html(lines[:cut], budget)
    kept = _joined(kept, _preformatted("\n".join(lines[rendered:cut])))
    trimmed, rendered = _text_blocks_to_html(lines[cut:], budget)
    trimmed = _joined(trimmed, _preformatted("\n".join(lines[cut + rendered:])))
    if trimmed:
        trimmed = _joined(trimmed, _preformatted(rest))
    else:
        kept = _joined(kept, _preformatted(rest))
    return Split(kept=kept, trimmed=trimmed)


# --- HTML ---------------------------------------------------------------------------------------

# Containers in which the clients put the quoted message (and everything after them is quote).
_QUOTE_CLASSES = ("gmail_quote", "yahoo_quoted", "protonmail_quote", "zmail_extra",
                  "moz-forward-container")  # Thunderbird's inline forward
_QUOTE_IDS = ("divrplyfwdmsg", "appendonsend", "mail-editor-reference-message-container", "isreplacedquote",
              "reply-intro", "zwchr")
_SIGNATURE_CLASSES = ("gmail_signature", "moz-signature", "signature", "apple-signature")
_SIGNATURE_IDS = ("signature", "ms-outlook-mobile-signature", "applemailsignature")
# Code keeps every line, and clients never put a quote inside it.
_PROTECTED = frozenset({"pre", "code", "tt", "kbd", "samp"})
_BLOCKS = frozenset({"div", "p", "span", "font", "b", "strong", "td"})
# The elements whose whole text is a line of its own: a "--" delimiter counts only in these, or in
# an inline element that is a line of its own (_whole_line), never in a table's cell or within a
# line ("Pressure <span>--</span> ok").
_LINE_BLOCKS = frozenset({"div", "p"})
_TABLE_TAGS = frozenset({"td", "th", "tr", "table", "tbody", "thead", "tfoot", "caption"})
# At most this many elements are read below a bare "--" for the lines that follow it.
_SIGNATURE_MAX_NODES = 200


def _in_table(element: etree._Element) -> bool:
    return any(ancestor.tag in _TABLE_TAGS for ancestor in element.iterancestors())


def _whole_line(element: etree._Element) -> bool:
    """True if an inline element is a line of its own: a line break or a block (or the start of its
    parent) before it, and one (or the end of its parent) after it, with no text between. Gmail
    writes its delimiter so: "<div><br></div><span class="gmail_signature_prefix">-- </span><br>"."""
    if element.tail and element.tail.strip():
        return False
    following = element.getnext()
    if following is not None and following.tag not in _LINE_TAGS:
        return False
    previous = element.getprevious()
    if previous is None:
        parent = element.getparent()
        return parent is None or not (parent.text or "").strip()
    return previous.tag in _LINE_TAGS and not (previous.tail or "").strip()


def _lines_below(start: etree._Element, *, inclusive: bool) -> list[str]:
    """The lines of text after ``start`` (and in it, if ``inclusive``), in document order, up to a
    quote (a blockquote, a quote container, an attribution or header line) or past what a
    signature holds: at most _SIGNATURE_MAX_LINES + 1 lines and _SIGNATURE_MAX_NODES elements."""
    pieces: list[str] = []
    nodes = 0

    def lines() -> list[str]:
        return [line for line in "".join(pieces).split("\n") if line.strip()]

    def stop(element: etree._Element) -> bool:
        if element.tag == "blockquote":
            return True
        classes = _classes(element)
        return any(name in classes for name in _QUOTE_CLASSES) or (element.get("id") or "").lower() in _QUOTE_IDS

    def read(element: etree._Element) -> bool:
        """Append the element's text; False once a quote starts or enough was read."""
        nonlocal nodes
        if not isinstance(element.tag, str):
            return True  # a comment or processing instruction shows nothing (its tail is read after it)
        for event, node in etree.iterwalk(element, events=("start", "end")):
            nodes += 1
            if nodes > _SIGNATURE_MAX_NODES:
                return False
            tag = node.tag if isinstance(node.tag, str) else ""
            if event == "start":
                if tag and stop(node):
                    return False
                if tag in _LINE_TAGS:
                    pieces.append("\n")
                if tag and node.text:
                    pieces.append(node.text)
            else:
                if tag in _LINE_TAGS:
                    pieces.append("\n")
                if node is not element and node.tail:
                    pieces.append(node.tail)
        return len(lines()) <= _SIGNATURE_MAX_LINES

    current = start
    going = read(start) if inclusive else True
    while going and current is not None:
        if current.tail:
            pieces.append(current.tail)
        sibling = current.getnext()
        while going and sibling is not None:
            going = read(sibling)
            if going and sibling.tail:
                pieces.append(sibling.tail)
            sibling = sibling.getnext()
        current = current.getparent()
    found = []
    for line in lines():
        if _matches_attribution(line) or _SEPARATOR.match(line) or _HEADER_FROM.match(line):
            break
        found.append(line)
    return found


def _dashes_sign_off(element: etree._Element, text: str, following: etree._Element, inclusive: bool) -> bool:
    """True if ``text``, a "--" line (its whole raw text), is a signature delimiter, "-- " or a bare
    "--", as the lines below it (from ``following``) say (_looks_like_signature). Never in a table."""
    if _in_table(element):
        return False
    bare = not text.lstrip().startswith(("-- ", "--\u00a0"))
    return _looks_like_signature(_lines_below(following, inclusive=inclusive), bare=bare)


def _classes(element: etree._Element) -> list[str]:
    return (element.get("class") or "").lower().split()


def _elements(element: etree._Element) -> Iterator[etree._Element]:
    """Elements in document order, never entering code blocks.

    lxml's own iteration, not recursive generators: those cost the nesting depth per element, and
    mail HTML nests hundreds deep.
    """
    protected: set[etree._Element] = set()
    for block in element.iter(*_PROTECTED):
        protected.update(block.iterdescendants())
    for child in element.iterdescendants():
        if isinstance(child.tag, str) and child not in protected:
            yield child


# No marker line (an attribution, Outlook's header block, a closing) is written with more elements
# than this: Outlook's header block, a label and a value in a few elements each, has about twenty.
_SHORT_TEXT_MAX_NODES = 100


def _short_text(element: etree._Element, limit: int = 400) -> str | None:
    """The element's text, spaces collapsed, or None if it is longer than a marker line can be, or
    holds more than _SHORT_TEXT_MAX_NODES elements.

    Reading stops past either limit: every block element is asked, and reading whole subtrees would
    make a large HTML mail (nested tables) cost quadratic time. Bounding the text alone did not bound
    the elements: 2000 nested <div>s around 6000 empty <b>s (52 KB) read 12 million elements, 14-35 s
    (a fuzzing review).
    """
    if sum(1 for _ in itertools.islice(element.iter(), _SHORT_TEXT_MAX_NODES + 1)) > _SHORT_TEXT_MAX_NODES:
        return None
    pieces: list[str] = []
    length = 0
    for piece in element.itertext():
        length += len(piece)
        if length > limit:
            return None
        pieces.append(piece)
    return " ".join("".join(pieces).split())


def _is_header_block(element: etree._Element, text: str) -> bool:
    """True if the element's text, which starts with "From:", holds a "Sent:" or "Date:" label.

    Outlook writes each label in a <b> of its own, or after a <br>: a label starts a piece of the
    element's text (the text is at most _short_text's limit, so this reads a few pieces).
    """
    return _HEADER_SENT_ANYWHERE.search(text) is not None or any(
        _HEADER_SENT.match(piece) for piece in element.itertext())


# The style Outlook desktop gives the block holding its header block (2013 and later #E1E1E1, 2007
# and 2010 #B5C4DF), in every language: "border:none;border-top:solid #E1E1E1 1.0pt;padding:3.0pt 0in 0in 0in".
_OUTLOOK_HEADER_STYLE = re.compile(r"border-top:\s*solid\s+#(?:E1E1E1|B5C4DF)\s+1\.0pt", re.IGNORECASE)
# The labels of the block in bold ("<b>From:</b>", "<b><span lang=ES>De:</span></b>"): at least these.
_OUTLOOK_HEADER_MIN_LABELS = 2


def _outlook_header_container(element: etree._Element) -> bool:
    """True if the <div> is the one Outlook desktop puts its header block in, whatever its language:
    its border style and, in its first few elements, bold labels ending in a colon."""
    style = element.get("style")
    if not style or "border-top" not in style.lower() or not _OUTLOOK_HEADER_STYLE.search(style):
        return False
    labels = 0
    for bold in itertools.islice(element.iter("b", "strong"), 20):
        if "".join(bold.itertext()).strip().endswith((":", "：")):
            labels += 1
            if labels >= _OUTLOOK_HEADER_MIN_LABELS:
                return True
    return False


def _marker(element: etree._Element) -> str | None:
    """"quote", "cite" (a blockquote that may be an inline reply), "signature", "closing" (a mobile
    closing, if nothing of the author's follows it) or None."""
    tag = element.tag
    classes = _classes(element)
    identifier = (element.get("id") or "").lower()
    if any(name in classes for name in _QUOTE_CLASSES) or identifier in _QUOTE_IDS:
        return "quote"
    if any(name in classes for name in _SIGNATURE_CLASSES) or identifier in _SIGNATURE_IDS:
        return "signature"
    if tag == "blockquote":
        return "cite"
    if "moz-cite-prefix" in classes:  # Thunderbird's attribution, above a quote or an inline reply.
        return "attribution"
    if tag in _LINE_BLOCKS and (element.text or "").strip() == "--" and len(element) and element[0].tag == "br" \
            and _dashes_sign_off(element, element.text, element[0], inclusive=True):
        return "signature"
    if tag == "hr" and element.get("id") == "stopSpelling":  # Outlook.com above its header block.
        return "quote"
    if tag == "a" and element.get("name") == "_MailOriginal":
        return "quote"  # Outlook desktop's bookmark at the start of the message it quotes
    if tag == "div" and _outlook_header_container(element):
        return "quote"
    if tag in _BLOCKS:
        text = _short_text(element)
        if text:
            if text == "--":
                if (tag in _LINE_BLOCKS or tag != "td" and _whole_line(element)) and _dashes_sign_off(
                        element, "".join(element.itertext()), element, inclusive=False):
                    return "signature"
                return None
            if _MOBILE_CLOSING.match(text):
                return "closing"
            if _matches_attribution(text) or _SEPARATOR.match(text):
                # The innermost element holding the line is the one to cut at.
                if not any(_matches_attribution(_short_text(child) or "") for child in element if isinstance(child.tag, str)):
                    return "attribution"
            if _HEADER_FROM.match(text) and _is_header_block(element, text):
                return "quote"
    if tag == "br" and (element.tail or "").strip() == "--" and element.getnext() is not None \
            and element.getnext().tag == "br" and _dashes_sign_off(element, element.tail, element.getnext(),
                                                                   inclusive=True):
        return "signature-after"
    return None


class _OwnTextAfter:
    """Whether the author wrote after a quote (an inline reply), not counting a signature.

    What follows an element in document order is its tail, its later siblings (each with its tail),
    then what follows its parent, up to ``root``. The scan stops at the first text or element with
    text (True) or the first signature or quote marker (False); markers of other quotes, and elements
    without text, are passed over. So the answer for an element is either settled by its tail or its
    next sibling, or is the answer for that next sibling (or, with none, for its parent), and each is
    computed once per document: asking for every attribution and blockquote walked everything after
    each of them, and 2000 of them in 110 KB of HTML took 16 s (a content review).
    """

    def __init__(self, root: etree._Element) -> None:
        self._root = root
        self._known: dict[etree._Element, bool] = {}

    def __call__(self, node: etree._Element) -> bool:
        path: list[etree._Element] = []
        current: etree._Element | None = node
        answer = False
        while True:
            if current is None or current is self._root:
                break
            if current in self._known:
                answer = self._known[current]
                break
            path.append(current)
            if current.tail and current.tail.strip():
                answer = True
                break
            sibling = current.getnext()
            if sibling is None:
                current = current.getparent()
                continue
            verdict = self._verdict(sibling)
            if verdict is not None:
                answer = verdict
                break
            current = sibling
        for element in path:
            self._known[element] = answer
        return answer

    @staticmethod
    def _verdict(item: etree._Element) -> bool | None:
        """True for the author's text, False for a signature or quote, None to look further."""
        if not isinstance(item.tag, str) or item.tag in ("blockquote", "br", "hr"):
            return None
        kind = _marker(item)
        if kind in ("signature", "quote"):
            return False
        if kind in ("attribution", "cite", "closing"):
            # A closing is the author's text if more of it follows, and ends it otherwise: either
            # way the answer is what follows it.
            return None
        if any(text.strip() for text in item.itertext()):
            return True
        return None


def _cut(node: etree._Element, root: etree._Element, *, keep_node: bool = False) -> list[etree._Element | str]:
    """Detach ``node`` (unless kept) and everything after it in document order; return it, in order."""
    removed: list[etree._Element | str] = []
    current = node
    first = not keep_node
    while current is not root and current.getparent() is not None:
        parent = current.getparent()
        siblings = []
        sibling = current if first else current.getnext()
        while sibling is not None:
            siblings.append(sibling)
            sibling = sibling.getnext()
        if not first and current.tail:
            removed.append(current.tail)
            current.tail = None
        for item in siblings:
            parent.remove(item)
            removed.append(item)
        first = False
        current = parent
    return removed


def _attribution_before(node: etree._Element) -> etree._Element:
    """The "On ... wrote:" element right before a quote belongs to it (Apple Mail, Thunderbird)."""
    previous = node.getprevious()
    while previous is not None and previous.tag == "br":
        previous = previous.getprevious()
    if previous is not None and isinstance(previous.tag, str):
        text = _short_text(previous)
        if text and (_matches_attribution(text) or _SEPARATOR.match(text)):
            return previous
    return node


def _serialize(items: list[etree._Element | str]) -> str:
    pieces = []
    for item in items:
        if isinstance(item, str):
            pieces.append(html.escape(item, quote=False))
        else:
            pieces.append(lxml.html.tostring(item, encoding="unicode", with_tail=False))
            if item.tail:
                pieces.append(html.escape(item.tail, quote=False))
    return "".join(pieces)


# libxml2 stops reading HTML nested deeper than this, even with its "huge" option, and without it
# at 256 levels, which mail reaches (a content review: 300 nested <div>s dropped everything below
# them, the author's own text too, without an error).
HTML_MAX_DEPTH = 2048


# What lxml refuses in a text it is given ("All strings must be XML compatible"): the C0 controls
# but tab, LF and CR, and the noncharacters U+FFFE and U+FFFF (lone surrogates, which UTF-7 can
# decode to, become U+FFFD where parts are decoded: gateway.charsets). libxml2 reads them into a
# document, but _flatten_children sets the joined text of the elements it unwraps, and a form
# feed in HTML nested over POSTED_MAX_DEPTH levels deferred the message with a 451 on every retry
# (a fuzzing review). A vertical tab or a form feed separates text, as a line break does; the
# others show nothing and are dropped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_NOT_XML_REPLACEMENTS = {"\x0b": "\n", "\x0c": "\n"}


def _xml_compatible(source: str) -> str:
    """``source`` without the characters lxml refuses (_NOT_XML)."""
    if _NOT_XML.search(source) is None:
        return source
    return _NOT_XML.sub(lambda match: _NOT_XML_REPLACEMENTS.get(match.group(), ""), source)


def _parse_html(source: str) -> etree._Element:
    """The HTML document, or HtmlNestedTooDeep rather than a document cut short.

    Every HTML part is parsed here (split_html, then _html_lines on what it trimmed), and what the
    gateway posts of it is serialized from this parse: cleaned here (_xml_compatible), the text is
    clean in every later step, the lxml tree, the sanitizer and the note. A parser per call: lxml
    parsers must not be shared between threads, and one costs ~1 µs.
    """
    source = _xml_compatible(source)
    parser = lxml.html.HTMLParser(huge_tree=True)
    document = lxml.html.document_fromstring(source, parser=parser)
    if any(error.type == etree.ErrorTypes.ERR_RESOURCE_LIMIT for error in parser.error_log):
        raise HtmlNestedTooDeep(f"more than {HTML_MAX_DEPTH} levels")
    return document


def _flatten(root: etree._Element, limit: int = POSTED_MAX_DEPTH) -> None:
    """Unwrap the elements nested deeper than ``limit`` below ``root`` that hold others, keeping all
    their text in order; the innermost ones (a paragraph, a <br>, an image) stay, one level deeper.

    Each element at the limit gets its innermost descendants as children, moved once: unwrapping
    one level at a time moves each subtree once per level, quadratic in the depth.
    """
    at_limit: list[etree._Element] = []
    depth = 0
    for event, element in etree.iterwalk(root, events=("start", "end")):
        check_deadline()
        if event == "start":
            depth += 1
            if depth == limit and any(len(child) for child in element):
                at_limit.append(element)
        else:
            depth -= 1
    for element in at_limit:
        _flatten_children(element)


def _flatten_children(element: etree._Element) -> None:
    # iterwalk passes over comments and processing instructions, and the text after each (its
    # tail) was lost with it: Outlook's "<!--[if !supportLists]-->" nested deep cost the words that
    # followed (found while fixing a fuzzing review's comments). They show nothing: dropped, their
    # tails kept in place (lxml's C loop, linear).
    etree.strip_elements(element, etree.Comment, etree.ProcessingInstruction, with_tail=False)
    runs: list[list[str]] = [[element.text or ""]]
    leaves: list[etree._Element] = []
    for event, node in etree.iterwalk(element, events=("start", "end")):
        check_deadline()
        if node is element:
            continue
        if len(node):
            runs[-1].append((node.text or "") if event == "start" else (node.tail or ""))
        elif event == "start":
            leaves.append(node)
            runs.append([node.tail or ""])
    element[:] = leaves
    element.text = "".join(runs[0]) or None
    for leaf, run in zip(leaves, runs[1:]):
        leaf.tail = "".join(run) or None


def _trailing_closing(body: etree._Element, closings: set[etree._Element]) -> etree._Element | None:
    """The first of the mobile closings that hold the last text of ``body`` (with nothing but blanks
    and other closings after it), or None if the last text or image is the author's.

    iOS Mail, Gmail and Samsung's app put the closing right above the quote, and wrap the quote's
    attribution or separator in a block of its own ("<div><br><blockquote>On ... wrote:"): the
    closing is known once the quote is cut off, as the end of what is left. The text is read once
    from the end, and each element's closing ancestor is looked up once.
    """
    pieces: list[etree._Element] = []  # the element holding each non-blank text or image, in order
    for event, element in etree.iterwalk(body, events=("start", "end")):
        check_deadline()
        if not isinstance(element.tag, str):
            continue
        if event == "start" and ((element.text and element.text.strip()) or element.tag == "img"):
            pieces.append(element)
        elif event == "end" and element is not body and element.tail and element.tail.strip():
            pieces.append(element.getparent())
    outermost: dict[etree._Element, etree._Element | None] = {}

    def closing_of(element: etree._Element) -> etree._Element | None:
        path = []
        current: etree._Element | None = element
        found = None
        while current is not None and current is not body:
            if current in outermost:
                found = outermost[current]
                break
            path.append(current)
            current = current.getparent()
        for item in reversed(path):  # from the top down: the outermost closing wins
            if found is None and item in closings:
                found = item
            outermost[item] = found
        return found

    first = None
    for element in reversed(pieces):
        closing = closing_of(element) if closings else None
        if closing is None:
            break
        first = closing
    return first


def _gmail_inline_reply(container: etree._Element) -> bool:
    """True if Gmail's quote container holds text of the author's: an inline reply.

    Gmail puts the answers typed into its quote between its blockquotes, inside the container: text
    after the first blockquote that is in none of them (nor in the attribution, gmail_attr). A
    forward has no blockquote (its message follows the gmail_attr block), so it is never one.
    """
    seen_quote = False
    skip: etree._Element | None = None  # the blockquote or gmail_attr being passed over
    walker = etree.iterwalk(container, events=("start", "end"))
    for event, element in walker:
        check_deadline()
        if element is container:
            continue
        is_element = isinstance(element.tag, str)
        if event == "start":
            if is_element and (element.tag == "blockquote" or "gmail_attr" in _classes(element)):
                seen_quote = seen_quote or element.tag == "blockquote"
                walker.skip_subtree()
                skip = element
                continue
            if seen_quote and is_element and element.text and element.text.strip():
                return True
        else:
            if element is skip:
                skip = None
            if seen_quote and element.tail and element.tail.strip():
                return True
    return False


def _outlook_inline_html(quote: etree._Element, author: str) -> bool:
    """_outlook_inline for the quote starting at ``quote``; what follows it is read only if an
    "[author]" marker can be in it (``author`` is empty if the source holds no "[")."""
    if _announces_inline(_text_before(quote)):
        return True
    return bool(author.strip()) and _prefaced_by(_quoted_message_text(quote), author)


def _quoted_message_text(quote: etree._Element) -> str:
    """The text of the message quoted below the Outlook quote marker ``quote``, up to the next message
    it quotes in turn (the next quote marker or attribution after its text): only there can the
    author's "[Name]" answers be (_quoted_message_lines says why).

    The innermost markers before the message's text (``quote`` itself, Outlook on the web's <hr>
    then divRplyFwdMsg) hold the header block, not the message: passed over. A marker holding more
    (a <div> around the block and a short message, which reads as starting with "From:") is read
    into. Each marker passed over is short (_short_text): the look for markers in it is bounded."""
    pieces: list[str] = []
    length = 0
    seen_text = False
    walker = etree.iterwalk(quote.getroottree().getroot(), events=("start", "end"))
    started = False
    for event, node in walker:
        check_deadline()
        started = started or node is quote
        if not started:
            continue
        if event == "end":
            piece = node.tail
        elif not isinstance(node.tag, str):
            continue
        else:
            kind = _marker(node)
            if kind in ("quote", "attribution", "cite"):
                if seen_text:
                    break  # the next message quoted
                if kind != "cite" and _short_text(node) is not None and not any(
                        _marker(inner) in ("quote", "attribution") for inner in node.iterdescendants()):
                    walker.skip_subtree()  # the header block (or the rule, the bookmark above it)
                    continue
            piece = node.text
        if piece and piece.strip():
            seen_text = True
            pieces.append(piece)
            length += len(piece)
            if length > _INLINE_SIGNS_MAX_CHARS:
                break
    return "".join(pieces)


# The markers of Outlook's quote, which it writes the same above inline answers (_outlook_inline).
_OUTLOOK_QUOTE_IDS = frozenset({"divrplyfwdmsg", "appendonsend"})


def _is_outlook_quote(element: etree._Element) -> bool:
    """True if ``element`` (a "quote" marker) is Outlook's: its header block, divRplyFwdMsg,
    appendonsend, the <hr> above it, or its "-----Original Message-----" line."""
    if "gmail_quote" in _classes(element) or any(name in _classes(element) for name in _QUOTE_CLASSES):
        return False
    identifier = (element.get("id") or "").lower()
    if identifier in _QUOTE_IDS:
        return identifier in _OUTLOOK_QUOTE_IDS
    text = _short_text(element) or ""
    return not _matches_attribution(text) and _FORWARD_MARKER.match(text) is None


def _answers_between_quotes(quote: etree._Element) -> bool:
    """True if, after the blockquote ``quote``, text is followed by another blockquote: answers
    between quotes, an inline reply. Reads what follows in document order once, blockquotes passed over."""
    seen_text = False

    def read(element: etree._Element) -> bool:
        nonlocal seen_text
        if not isinstance(element.tag, str):
            return False
        walker = etree.iterwalk(element, events=("start", "end"))
        for event, node in walker:
            check_deadline()
            if event == "start":
                if node.tag == "blockquote":
                    if seen_text:
                        return True
                    walker.skip_subtree()
                elif isinstance(node.tag, str) and node.text and node.text.strip():
                    seen_text = True
            elif node is not element and node.tail and node.tail.strip():
                seen_text = True
        return False

    current: etree._Element | None = quote
    while current is not None:
        if current.tail and current.tail.strip():
            seen_text = True
        sibling = current.getnext()
        while sibling is not None:
            if read(sibling):
                return True
            if sibling.tail and sibling.tail.strip():
                seen_text = True
            sibling = sibling.getnext()
        current = current.getparent()
    return False


def _text_before(node: etree._Element) -> str:
    """The text before ``node`` in document order (libxml2's XPath: a fifth of a walk's cost)."""
    return "".join(node.xpath("preceding::text()"))


def _footer_below_quote(body: etree._Element, attribution: etree._Element, quote: etree._Element) -> bool:
    """True if the text after the quote is a footer below a top-posted reply: the author wrote above
    the client's attribution (_top_posted) and nothing between quotes, only after the last.

    An outbound gateway's disclaimer or a list's footer lands below the quote; taken for the answer
    of an inline reply, it kept the whole quote in the note (a stripping review).
    """
    return _top_posted(_text_before(attribution), _short_text(attribution) or "") and not _answers_between_quotes(quote)


def split_html(source: str, author: str = "") -> Split:
    """Split an HTML body at the first quote or signature its client marked, outside code blocks.

    ``author`` is the sender's display name, for Outlook's "[Name]" marker of inline answers."""
    try:
        document = _parse_html(source)
    except (etree.ParserError, ValueError):
        return Split(kept="", trimmed="")
    body = document.find("body")
    if body is None:
        return Split(kept="", trimmed="")
    cut_at = None
    own_text_after = _OwnTextAfter(body)
    closings: set[etree._Element] = set()
    inline: set[etree._Element] = set()  # the content of Gmail quote containers answered inline
    inline_reply = False  # answers were found between quotes: every quote below stays too
    for element in _elements(body):
        # The message's deadline, checked for each element: the steps below cost what the HTML's
        # shape makes them cost, and the deadline is what stops one costlier than foreseen.
        check_deadline()
        if element in inline:
            continue
        kind = _marker(element)
        if kind is None:
            continue
        if kind == "quote" and element.tag != "blockquote" and "gmail_quote" in _classes(element) \
                and _gmail_inline_reply(element):
            inline.update(element.iterdescendants())  # An inline reply: the quotes stay next to the answers.
            continue
        if kind == "cite":
            if element.get("type", "").lower() != "cite" and "gmail_quote" not in _classes(element):
                previous = _attribution_before(element)
                if previous is element:
                    continue  # A plain blockquote is the author's own formatting.
            attribution = _attribution_before(element)
            if attribution is element and not _matches_attribution(_short_text(element) or ""):
                attribution = None  # iOS Mail puts the attribution in a blockquote of its own
            if own_text_after(element) and (inline_reply or attribution is None
                                            or not _footer_below_quote(body, attribution, element)):
                inline_reply = True
                continue  # An inline reply: the quotes stay next to the answers.
            cut_at = _attribution_before(element)
        elif kind == "attribution":
            following = element.getnext()
            while following is not None and following.tag == "br":
                following = following.getnext()
            quoted = following is not None and following.tag == "blockquote"
            text = _short_text(element) or ""
            if not quoted and "moz-cite-prefix" not in _classes(element) and not _SEPARATOR.match(text):
                continue  # "I wrote:" in the author's own text, with no quote below it.
            if quoted and own_text_after(following) and (inline_reply or not _footer_below_quote(body, element, following)):
                inline_reply = True
                continue
            cut_at = element
        elif kind == "closing":
            closings.add(element)  # one only if it ends the author's text: decided below
            continue
        else:
            cut_at = element
            if element.tag == "a":
                # Outlook's _MailOriginal bookmark opens the quoted message, which may start with a
                # table (a forwarded newsletter): the table goes whole, a cut in it orphans its cells.
                tables = [ancestor for ancestor in element.iterancestors("table")]
                if tables:
                    cut_at = tables[-1]
        break
    if cut_at is not None and (kind == "quote" or kind == "attribution" and _SEPARATOR.match(_short_text(cut_at) or "")) \
            and _is_outlook_quote(cut_at) and _outlook_inline_html(cut_at, author if "[" in source else ""):
        # Outlook's inline answers below its header block: nothing tells them from the quote but
        # the author's words above it or the answers' "[Name]" marker. Kept whole, quote and answers.
        cut_at = None
    removed = _cut(cut_at, body, keep_node=kind == "signature-after") if cut_at is not None else []
    closing = _trailing_closing(body, closings)
    if closing is not None:
        removed = _cut(closing, body) + removed
    # What was cut holds the comments and processing instructions that followed the cut point too
    # (Windows' clipboard "<!--EndFragment-->", an outbound gateway's "<!-- disclaimer -->"): they
    # hold no element to flatten, and iterwalk refuses one, which deferred such a reply with a 451
    # on every retry (a fuzzing review). _serialize writes them as they were; the sanitizer drops them.
    for item in [body, *removed]:
        if isinstance(item, etree._Element) and isinstance(item.tag, str):
            _flatten(item)
    trimmed = _serialize(removed)
    kept = (body.text and html.escape(body.text, quote=False) or "") + _serialize(list(body))
    return Split(kept=kept, trimmed=trimmed)


# --- Forwards -----------------------------------------------------------------------------------

# Elements that start a new line of text when a browser shows them.
_LINE_TAGS = frozenset({"br", "p", "div", "tr", "li", "hr", "table", "pre", "blockquote", "details", "summary",
                        "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol"})


def _html_lines(source: str) -> list[str]:
    """The lines of text an HTML fragment shows, a blockquote opening with a ">" line of its own."""
    try:
        document = _parse_html(source)
    except (etree.ParserError, ValueError):
        return []
    pieces: list[str] = []
    for event, element in etree.iterwalk(document, events=("start", "end")):
        check_deadline()
        tag = element.tag if isinstance(element.tag, str) else ""
        if event == "start":
            if tag in _LINE_TAGS:
                pieces.append("\n>\n" if tag == "blockquote" else "\n")
            if tag and element.text:
                pieces.append(" ".join(element.text.split("\n")))
        else:
            if tag in _LINE_TAGS:
                pieces.append("\n")
            if element.tail:
                pieces.append(" ".join(element.tail.split("\n")))
    return "".join(pieces).split("\n")


def _starts_message(lines: list[str], index: int) -> bool:
    """True if another message starts at this line: a quote, an attribution, a separator, a header block."""
    return _is_quoted(lines[index]) or _is_attribution(lines, index)


def is_forward(trimmed: str, forward_subject: bool) -> bool:
    """True if what was trimmed (HTML) is a message the author forwarded, not the one it answers.

    Two signals, because neither is enough alone:
    - the forward marker line: Gmail, Thunderbird, mutt and Apple Mail write one above a forwarded
      message and never above a quoted one, whatever the subject became. Outlook writes none;
    - a forward prefix on the subject ("Fwd:", "FW:", "WG:", "TR:", "RV:", "I:", ...,
      gateway/subject.py), which every client sets on a forward, Outlook included, and which the
      trimmed part must back with the start of another message (a separator, a "From: ... Sent:"
      block, an attribution or a quote): a file forwarded as attachment under "Fwd:" leaves at
      most a signature behind, and that is no forwarded text.
    The forwarded message starts the trimmed part, or follows the forwarder's signature ("-- ",
    "Sent from my iPhone"), which the clients put above it. A reply ("Re:") whose trimmed part
    opens with "On ... wrote:" or "-----Original Message-----" is neither, and stays refused.
    """
    lines = [line.strip() for line in _html_lines(trimmed) if line.strip()]
    if not lines:
        return False
    start = 0
    if _ANY_SIGNATURE_DELIMITER.match(lines[0]) or _MOBILE_CLOSING.match(lines[0]):
        start = next((index for index in range(1, len(lines)) if _starts_message(lines, index)), len(lines))
        if start == len(lines):
            return False
    # Apple Mail puts the whole forward, "Begin forwarded message:" included, in a blockquote.
    first_line = next((line for line in lines[start:] if line != ">"), "")
    if _FORWARD_MARKER.match(first_line):
        return True
    return forward_subject and _starts_message(lines, start)
