"""TorchServe's own files: its config.properties and the key_file.json it writes into the
directory it was started from."""

from __future__ import annotations

import json
import re
from pathlib import Path

KEY_FILE = "key_file.json"


def read_properties(path: Path) -> dict[str, str]:
    """config.properties as TorchServe's frontend reads it: java.util.Properties.load."""
    return parse_properties(Path(path).read_text(encoding="latin-1"))


_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_ESCAPED = {v: k for k, v in _ESCAPES.items()}
_WHITESPACE = " \t\f"


def _logical_lines(text: str) -> list[str]:
    r"""Natural lines (ended by \n, \r or \r\n) joined where one ends in an odd number of
    backslashes, the next one's leading whitespace dropped; comments (# or ! first) and
    blank lines left out."""
    out: list[str] = []
    pending: str | None = None
    for raw in re.split(r"\r\n|\r|\n", text):
        line = raw.lstrip(_WHITESPACE)
        if pending is None and (not line or line[0] in "#!"):
            continue
        trailing = len(line) - len(line.rstrip("\\"))
        joined = line if pending is None else pending + line
        if trailing % 2:
            pending = joined[:-1]
        else:
            pending = None
            out.append(joined)
    if pending is not None:
        out.append(pending)
    return out


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c != "\\" or i + 1 == len(text):
            out.append(c)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "u":
            digits = text[i + 2 : i + 6]
            if len(digits) != 4 or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise ValueError(f"malformed \\uxxxx escape: {text[i : i + 6]!r}")
            out.append(chr(int(digits, 16)))
            i += 6
        else:
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
    # \\uXXXX escapes are UTF-16 units: a pair of surrogates is one character
    return "".join(out).encode("utf-16-be", "surrogatepass").decode("utf-16-be", "surrogatepass")


def parse_properties(text: str) -> dict[str, str]:
    r"""The rules of java.util.Properties.load: lines continued by a trailing backslash;
    the key ends at the first unescaped '=', ':' or whitespace, after which whitespace and
    one '=' or ':' are skipped; backslash escapes (\t \n \r \f \uXXXX, any other
    character as itself); a later key wins."""
    props: dict[str, str] = {}
    for line in _logical_lines(text):
        i, key_end = 0, len(line)
        while i < len(line):
            if line[i] == "\\":
                i += 2
                continue
            if line[i] in "=:" + _WHITESPACE:
                key_end = i
                break
            i += 1
        rest = line[key_end:].lstrip(_WHITESPACE)
        if rest[:1] in ("=", ":"):
            rest = rest[1:].lstrip(_WHITESPACE)
        props[_unescape(line[:key_end])] = _unescape(rest)
    return props


def _escape(text: str, key: bool) -> str:
    r"""ASCII that _unescape reads back as `text`: backslashes, tabs, line and form feeds
    escaped, anything else outside printable ASCII as \uXXXX; in a key also the
    separators and a leading comment mark, in a value a leading space."""
    out = []
    for n, c in enumerate(text):
        if c == "\\":
            out.append("\\\\")
        elif c in _ESCAPED:
            out.append("\\" + _ESCAPED[c])
        elif (key and (c in "=: " or (n == 0 and c in "#!"))) or (n == 0 and c == " "):
            out.append("\\" + c)
        elif not " " <= c <= "~":
            units = c.encode("utf-16-be", "surrogatepass")
            out.extend(f"\\u{int.from_bytes(units[k : k + 2], 'big'):04x}" for k in range(0, len(units), 2))
        else:
            out.append(c)
    return "".join(out)


def format_properties(props: dict[str, str]) -> str:
    """The text that java.util.Properties.load (and parse_properties) reads back as `props`."""
    return "".join(f"{_escape(k, key=True)}={_escape(v, key=False)}\n" for k, v in props.items())


def read_keys(key_file: Path) -> dict[str, str]:
    """{"inference": ..., "management": ..., "API": ...} from TorchServe's key_file.json."""
    data = json.loads(Path(key_file).read_text())
    return {name: entry["key"] for name, entry in data.items()}


def expiries(key_file: Path) -> dict[str, str]:
    """Each key's expiry as TorchServe wrote it ("never" for the API key)."""
    data = json.loads(Path(key_file).read_text())
    return {name: entry.get("expiration time", "never") for name, entry in data.items()}
