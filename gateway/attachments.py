"""Which files of a message are filed with it: size limits and a type deny-list from the rules (issue 3)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import AttachmentRules
from gateway.context import Attachment
from gateway.refusals import AttachmentRefused

# Executables announce themselves in their first bytes whatever the name or the declared type says
# (a "report.pdf" that is a Windows program): PE files start with "MZ", Linux ones with ELF's magic.
_EXECUTABLE_MAGIC = ((b"MZ", "application/x-msdownload"), (b"\x7fELF", "application/x-executable"))


@dataclass(frozen=True)
class RefusedFile:
    filename: str
    size: int
    reason: str

    def __str__(self) -> str:
        return f"{self.filename} ({self.reason})"


def size_text(size: int) -> str:
    """A size as people read it: "812 bytes", "3.0 MiB"."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError  # pragma: no cover


def _denied_type(attachment: Attachment, rules: AttachmentRules) -> str | None:
    name = attachment.filename.lower()
    # Windows reads "invoice.vbs::$DATA" (an NTFS stream) and "invoice.vbs:x" as invoice.vbs; the
    # name is checked whole too, so a colon cannot hide the extension of "report 10:30.exe".
    names = (name, name.partition(":")[0]) if ":" in name else (name,)
    for candidate in names:
        # The end of the name is compared, not only its last extension, so that ".tar.gz" in the
        # rules refuses "backup.tar.gz"; each entry starts with a dot (config.py), so ".exe" never
        # refuses "maxe" or "exe". The longest entry that matches is named.
        candidate = candidate.rstrip(". ")
        matching = [extension for extension in rules.denied_extensions if candidate.endswith(extension)]
        if matching:
            return f"{max(matching, key=len)} files are not accepted"
    if attachment.content_type.lower() in rules.denied_types:
        return f"{attachment.content_type.lower()} files are not accepted"
    for magic, sniffed in _EXECUTABLE_MAGIC:
        if attachment.payload.startswith(magic) and sniffed in rules.denied_types:
            return "executable files are not accepted"
    return None


def screen(attachments: list[Attachment], rules: AttachmentRules) -> tuple[list[Attachment], list[RefusedFile]]:
    """The files to file, and those refused with the reason; a file over a limit never fails the rest."""
    accepted: list[Attachment] = []
    refused: list[RefusedFile] = []
    total = 0
    for attachment in attachments:
        size = len(attachment.payload)
        reason = _denied_type(attachment, rules)
        if reason is None and size > rules.max_file_size:
            reason = f"{size_text(size)}, over the limit of {size_text(rules.max_file_size)} per file"
        if reason is None and total + size > rules.max_total_size:
            reason = f"the files of one message may hold {size_text(rules.max_total_size)} in all"
        if reason is not None:
            refused.append(RefusedFile(attachment.filename, size, reason))
            continue
        total += size
        accepted.append(attachment)
    if refused and rules.on_refused_file == "refuse":
        raise AttachmentRefused("; ".join(str(item) for item in refused))
    return accepted, refused
