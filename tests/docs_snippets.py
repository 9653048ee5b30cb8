"""The README's Postfix example read as data, so that tests run exactly what it tells an admin to write."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


@dataclass
class PostfixExample:
    main_cf: dict[str, str]       # key = value lines of "# /etc/postfix/main.cf"
    transports: dict[str, str]    # domain -> next hop, of "# /etc/postfix/transport" (none: nothing queued)
    listener: dict[str, object]   # the [listener] keys of "# gateway.toml" (none: the defaults)
    smtpd: list[str]              # the fields of the smtp inet line of "# /etc/postfix/master.cf"
    smtpd_options: dict[str, str]  # its "-o name=value" lines


def readme_postfix_example() -> PostfixExample:
    """The first code block of the README's "How mail reaches the gateway", split by its file comments."""
    text = README.read_text()
    section = text[text.index("## How mail reaches the gateway"):]
    block = re.search(r"^```\n(.*?)^```", section, re.M | re.S).group(1)
    files: dict[str, list[str]] = {}
    current = None
    for line in block.splitlines():
        header = re.match(r"# (/etc/postfix/main\.cf|/etc/postfix/master\.cf|/etc/postfix/transport|gateway\.toml)\b",
                          line)
        if header:
            current = files.setdefault(header.group(1), [])
        elif current is not None and line.strip() and not line.startswith("#"):
            current.append(line)
    main_cf = dict(line.split("=", 1) for line in files["/etc/postfix/main.cf"])
    transports = dict(line.split(None, 1) for line in files.get("/etc/postfix/transport", []))
    gateway_toml = tomllib.loads("\n".join(files.get("gateway.toml", [])))
    master_cf = files.get("/etc/postfix/master.cf", [])
    smtpd = next((line.split() for line in master_cf if line.split()[:2] == ["smtp", "inet"]), [])
    options = [line.split(None, 1)[1] for line in master_cf if line.split()[0] == "-o"]
    return PostfixExample(main_cf={key.strip(): value.strip() for key, value in main_cf.items()},
                          transports={domain: hop.strip() for domain, hop in transports.items()},
                          listener=gateway_toml.get("listener", {}), smtpd=smtpd,
                          smtpd_options=dict(option.split("=", 1) for option in options))
