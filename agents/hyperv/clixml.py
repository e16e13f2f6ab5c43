"""PowerShell's error output read back as one clear message: the `#< CLIXML` error stream or plain stderr, stripped to the cmdlet's own words.

PowerShell run without a console (as WinRM runs it) writes its error records to stderr
serialized as CLIXML: `#< CLIXML` then an `<Objs>` document whose `<S S="Error">`
strings are the lines of the formatted errors, with control characters escaped as
`_xHHHH_`. The formatted record is the cmdlet's message ("Start-VM : ..."), then the
position ("At line:..."), the offending line ("+ ...") and category lines; only the
message is kept.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

CLIXML_HEADER = "#< CLIXML"
_ESCAPE = re.compile(r"_x([0-9A-Fa-f]{4})_")
#: Lines of a formatted error record that are not its message.
_NOISE = re.compile(
    r"^\s*(At line:\d+|At .+:\d+ char:\d+|\+ |\+$|~+$|CategoryInfo|FullyQualifiedErrorId)"
)


def unescape(text: str) -> str:
    """CLIXML's `_xHHHH_` escapes decoded."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text)


def error_lines(stderr: str) -> list[str]:
    """The error stream's text, line by line: CLIXML decoded when it is CLIXML."""
    text = stderr.strip()
    if not text.startswith(CLIXML_HEADER):
        return text.splitlines()
    lines: list[str] = []
    for doc in re.findall(r"<Objs\b.*?</Objs>", text, flags=re.S):
        try:
            root = ET.fromstring(doc)
        except ET.ParseError:
            continue
        for node in root.iter():
            if node.tag.rsplit("}", 1)[-1] == "S" and node.get("S") == "Error" and node.text:
                lines.extend(unescape(node.text).splitlines())
    return lines


def error_message(stderr: str) -> str:
    """The cmdlet's message from PowerShell's error output ('' when there is none)."""
    kept = []
    for line in error_lines(stderr):
        stripped = line.strip()
        if not stripped or _NOISE.match(stripped):
            continue
        kept.append(stripped)
    return " ".join(kept)
