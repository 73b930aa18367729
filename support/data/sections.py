"""Split a free-text radiology report into its sections (MIMIC-CXR style).

MIMIC-CXR reports are loosely structured: ``FINDINGS:`` and ``IMPRESSION:`` are common but
renamed (``CONCLUSION:``, ``IMPRESSIONS:``), merged (``FINDINGS AND IMPRESSION:``), written in
mixed case, or missing. A heading is a line that starts with an upper-case phrase (or a known
section name in any case) followed by a colon; the text up to the next heading is its section.
"""

from __future__ import annotations

import re

# Headings recognised in any letter case; other headings must be upper case to count.
_KNOWN = (
    "findings", "impression", "impressions", "conclusion", "conclusions", "summary",
    "findings and impression", "findings/impression", "impression and findings",
    "indication", "indications", "history", "clinical history", "reason for examination",
    "reason for exam", "examination", "exam", "technique", "comparison", "comparisons",
    "wet read", "notification", "recommendation", "recommendations", "recommendation(s)",
    "addendum", "final report", "procedure", "clinical information",
)
_ALIASES = {
    "impressions": "impression", "conclusion": "impression", "conclusions": "impression",
    "summary": "impression", "indications": "indication", "comparisons": "comparison",
    "exam": "examination", "reason for exam": "reason for examination",
    "recommendations": "recommendation", "recommendation(s)": "recommendation",
}
_BOTH = ("findings and impression", "findings/impression", "impression and findings")

_HEADING = re.compile(
    r"^[ \t]*(?P<name>(?:" + "|".join(re.escape(k) for k in sorted(_KNOWN, key=len, reverse=True))
    + r")|[A-Z][A-Z0-9 ()/&'-]{1,60}?)[ \t]*:",
    re.MULTILINE | re.IGNORECASE,
)


def _clean(text: str) -> str:
    return " ".join(text.split())


def parse_sections(text: str) -> dict[str, str]:
    """Report text -> ``{"findings", "impression", <other lower-case section names>}``.

    ``findings`` and ``impression`` are always present ("" when absent). Whitespace inside a
    section is collapsed to single spaces; "___" (de-identified text) is kept as is. A section
    repeated (an addendum) is joined to the first. A merged "FINDINGS AND IMPRESSION:" fills both.
    Text before the first heading is kept under ``"preamble"`` when it is not just "FINAL REPORT".
    """
    if not isinstance(text, str):
        raise TypeError(f"report: expected str, got {type(text).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    sections: dict[str, str] = {}
    matches = []
    for m in _HEADING.finditer(text):
        name = m.group("name")
        known = name.lower() in _KNOWN
        # An unknown heading must be written in capitals (a sentence like "Note: ..." is text).
        if not known and name != name.upper():
            continue
        matches.append(m)

    def add(key: str, body: str) -> None:
        if body:
            sections[key] = f"{sections[key]} {body}" if sections.get(key) else body

    head = _clean(text[:matches[0].start()] if matches else text)
    head = re.sub(r"^FINAL REPORT\s*", "", head, flags=re.IGNORECASE)
    if head:
        add("preamble", head)
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = " ".join(m.group("name").lower().split())
        body = _clean(text[m.end():end])
        if name in _BOTH:
            add("findings", body)
            add("impression", body)
            continue
        add(_ALIASES.get(name, name), body)
    sections.setdefault("findings", "")
    sections.setdefault("impression", "")
    return sections
