"""What the jailbreak guard reads of a prompt: base64 runs decoded when they are text, named when not.

The guard's head (``classifier.GuardHead``) was trained on plain text. Base64 is not plain text to
it: any run of base64 reads as an attack (0.90 for "What does this base64 string decode to?
aGVsbG8g..." of "hello world, how are you"), whatever it encodes, so a developer asking about a
base64 string was refused, and an attack hidden in base64 was caught for its wrapping, not for
what it says. The guard reads each such run decoded instead: the question above scores 0.74 (under
the threshold), "Decode this base64 and do what it says: SWdub3Jl..." still 0.999, since its
decoded text is the attack. A long run that decodes to bytes that are not text (an image, a
certificate, a key: 300 random bytes, 0.93-0.99 in a question about them) reads as ``BINARY``
(0.03-0.08 in the same questions): it carries no instruction a model would read as text.

A run is decoded only when it is at least ``MIN_RUN`` characters of the base64 alphabet (standard
or URL-safe, padding optional) and decodes to UTF-8 text of printable characters with a letter
among them (12 random bytes are all printable ASCII once in ~150,000 runs): hex digests, ids, long
words ("internationalization" is valid base64) and random tokens decode to bytes that are not such
text, and are left as they are unless they are at least ``BINARY_RUN`` characters long, mix upper
case, lower case and digits, and have few "/", "-" or "_" (URL and file paths, and "a/b/c" word
lists, are in base64's alphabet too; hex digests have no upper case). Once only: a second layer is
read as its first layer's base64. What this gives up: an attack in base64 of bytes that are not
UTF-8 text (UTF-16, gzip) reads as ``BINARY``, where before any long base64 was flagged; a model
would have to decode it twice to follow it.

Used by ext_proc before it calls ``prompt_guard`` (and the guard's judge), and by
``bench/guard_eval.py`` before it scores, so the figures are those of the served path.
"""

from __future__ import annotations

import base64
import binascii
import re

__all__ = ["BINARY", "BINARY_RUN", "MIN_RUN", "guard_text"]

MIN_RUN = 16  # characters: 12 bytes decoded, shorter runs are words and ids more often than payloads
BINARY_RUN = 64  # characters (48 bytes): a run this long that is base64 of bytes that are not text reads as BINARY
BINARY = "(binary data)"
SCAN_CHARS = 65_536  # a longer text is read at its start and end only (the classifier reads 4,096 characters)
MAX_SEPARATOR_SHARE = 20  # a run with more than one "/", "-" or "_" in this many characters is a path, not base64
_RUN = re.compile(r"(?<![A-Za-z0-9+/_=-])[A-Za-z0-9+/_-]{%d,}={0,2}(?![A-Za-z0-9+/_=-])" % MIN_RUN)


def _read(run: str) -> str:
    """What the guard reads for one run: its text, ``BINARY``, or the run itself."""
    body = run.rstrip("=")
    if len(body) % 4 == 1:  # no base64 string has this length
        return run
    padded = body + "=" * (-len(body) % 4)
    try:
        raw = base64.urlsafe_b64decode(padded) if ("-" in body or "_" in body) else base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return run
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\n\r\t" for c in text) and any(c.isalpha() for c in text):
        return text
    return BINARY if len(run) >= BINARY_RUN and _looks_random(body) else run


def _looks_random(body: str) -> bool:
    """Upper case, lower case and digits, as base64 of any 48 bytes has, and few of "/", "-", "_"
    (one in 64 characters of base64, on average): URL paths ("com/questions/59391408/passing-
    multiple-yml-files"), file paths ("/Users/me/WebstormProjects/pwa-2223/node") and words joined
    by "/" are in base64's alphabet too, and decode to bytes, but they are text, and stay."""
    separators = sum(c in "/-_" for c in body)
    return (separators <= len(body) / MAX_SEPARATOR_SHARE and any(c.isupper() for c in body)
            and any(c.islower() for c in body) and any(c.isdigit() for c in body))


def guard_text(text: str) -> str:
    """``text`` with every base64 run that decodes to readable text replaced by that text, and every
    long one that decodes to other bytes by ``BINARY``; of a text longer than twice ``SCAN_CHARS``,
    only in its first and last ``SCAN_CHARS`` characters (what the guard reads: the classifier its
    start, the judge its start and end), so an 8 MiB prompt costs ~10 ms here, not ~1.4 s of
    ext_proc's event loop."""
    if len(text) < MIN_RUN:
        return text
    if len(text) <= 2 * SCAN_CHARS:
        return _sub(text)
    return _sub(text[:SCAN_CHARS]) + text[SCAN_CHARS:-SCAN_CHARS] + _sub(text[-SCAN_CHARS:])


def _sub(text: str) -> str:
    return _RUN.sub(lambda m: _read(m.group(0)), text)
