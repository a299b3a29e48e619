"""Grounding for the ``function_call`` engine: which values the user's own words support.

Small models invent optional arguments (``units: "celsius"``): :func:`grounded` tells whether a
value is in the user's words (numbers, number words, phrases, echoed parameter names), and
:func:`split_off` gives each of the user's words to one argument.
"""

from __future__ import annotations

import datetime
import re

from sidegate_models.function_call.schema import JSON

_NUM_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 1_000_000, "billion": 1_000_000_000, "dozen": 12, "a": 1, "an": 1,
    "single": 1, "once": 1, "twice": 2, "double": 2, "couple": 2, "pair": 2, "half": 0.5,
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "week": 7, "weekend": 2,
    "fortnight": 14, "month": 30, "year": 365, "quarter": 0.25, "percent": 0.01,
}
_MULT = {"k": 1e3, "thousand": 1e3, "m": 1e6, "million": 1e6, "mn": 1e6, "b": 1e9, "bn": 1e9,
         "billion": 1e9, "hundred": 1e2, "%": 0.01, "percent": 0.01, "dozen": 12}
_NUM_RE = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?\s*(k|m|mn|b|bn|%|thousand|million|billion|hundred|percent|dozen)?(?![\d.,]\d)(?![a-z]*\d)|\.\d+",
                     re.IGNORECASE)
_WORD_RE = re.compile(r"[a-z]+|[0-9]+")


def numbers_in(text: str) -> set[float]:
    out: set[float] = set()
    for m in _NUM_RE.finditer(text):
        raw = m.group(0)
        suffix = m.group(1)
        num_txt = raw[: m.start(1) - m.start(0)] if suffix else raw
        try:
            v = float(num_txt.replace(",", "").strip())
        except ValueError:
            continue
        out.add(v)
        if suffix:
            out.add(v * _MULT[suffix.lower()])
    words = _WORD_RE.findall(text.lower())
    for i, w in enumerate(words):
        if w in _NUM_WORDS:
            v = float(_NUM_WORDS[w])
            out.add(v)
            if i + 1 < len(words) and words[i + 1] in _MULT:  # "two hundred", "3 million"
                out.add(v * _MULT[words[i + 1]])
    for i in range(len(words) - 1):  # "twenty five"
        a, b = _NUM_WORDS.get(words[i]), _NUM_WORDS.get(words[i + 1])
        if a and b and a >= 20 and a % 10 == 0 and 0 < b < 10:
            out.add(float(a + b))
    return out


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def _word_in(word: str, vocab: set[str]) -> bool:
    if word in vocab:
        return True
    if len(word) <= 2 and word.isalpha():  # "24h" ~ "24 hour", "km" ~ "kilometers"
        return any(v.startswith(word) for v in vocab)
    if len(word) >= 4:  # "celsius"/"Celsius", "days"/"day", "metric"/"metrics"
        stem = word[:max(4, len(word) - 2)]
        return any(v.startswith(stem) or (len(v) >= 4 and word.startswith(v[:max(4, len(v) - 2)]))
                   for v in vocab)
    return False


_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
             "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14,
             "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18, "nineteenth": 19, "twentieth": 20,
             "thirtieth": 30}
_ISO_DATE = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})(?:[T ](\d{1,2}):(\d{2})(?::(\d{2})(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?")
_CLOCK = re.compile(r"(?<!\d)(\d{1,2})(?::(\d{2}))?\s*(am|pm|a\.m\.|p\.m\.)?(?![\d])", re.IGNORECASE)


_WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_YEAR = re.compile(r"(?<!\d)(?:19|20)\d{2}(?!\d)")
# a date or time format ("YYYY-MM-DD", "HH:MM", "MM/DD/YYYY"): doubled format letters and a separator
_PLACEHOLDER = re.compile(r"(?=.*(?:YY|MM|DD|dd|HH|hh|mm|SS|ss))(?=.*[-/:.])[YyMDdHhmSsTZ:/. -]+")
_TIME = re.compile(r"(\d{1,2}):(\d{2})(?::\d{2})?")
_MAY_MAR = re.compile(r"\b(may|mar)\.?\s+\d|\d(st|nd|rd|th)?\s+(of\s+)?(may|mar)\b", re.IGNORECASE)


def today() -> datetime.date:
    """The date relative dates are read against ("tomorrow"): this host's."""
    return datetime.date.today()


def weekdays_named(user_text: str, ref: datetime.date) -> dict[str, datetime.date]:
    """Each weekday ``user_text`` names, capitalized, with its next date from ``ref`` (``ref``
    itself when it is that day)."""
    return {w.capitalize(): ref + datetime.timedelta(days=(_WEEKDAYS.index(w) - ref.weekday()) % 7)
            for w in dict.fromkeys(_words(user_text)) if w in _WEEKDAYS}


def named_dates(user_text: str, ref: datetime.date) -> set[datetime.date]:
    """The dates ``user_text`` names relative to ``ref``: today (tonight, this morning ...),
    tomorrow, the day after tomorrow, yesterday, and a weekday (its next one from ``ref``, ``ref``
    itself when it is that day, and the one a week later after "next")."""
    words = _words(user_text)
    joined = " ".join(words)
    out: set[datetime.date] = set()
    if {"today", "tonight"} & set(words) or re.search(r"\bthis (morning|afternoon|evening)\b", joined):
        out.add(ref)
    if "tomorrow" in words:
        out.add(ref + datetime.timedelta(days=2 if "day after tomorrow" in joined else 1))
    if "yesterday" in words:
        out.add(ref - datetime.timedelta(days=2 if "day before yesterday" in joined else 1))
    coming = weekdays_named(user_text, ref)
    out.update(coming.values())
    for before, w in zip(words, words[1:]):
        if before == "next" and w in _WEEKDAYS:
            out.add(coming[w.capitalize()] + datetime.timedelta(days=7))
    return out


def date_to_work_out(user_text: str, ref: datetime.date) -> bool:
    """Whether ``user_text`` gives a date whose ISO form needs today's date: one named relative to
    ``ref`` ("tomorrow", "on Friday") or a month with no year written anywhere ("March 3rd")."""
    if _YEAR.search(user_text):
        return False
    months = {*_MONTHS, *(m[:3] for m in _MONTHS)} - {"may", "mar"}  # "may I ...", "mar" the verb: only beside a number
    return (bool(named_dates(user_text, ref)) or bool(set(_words(user_text)) & months)
            or _MAY_MAR.search(user_text) is not None)


def _date_grounded(value: str, user_text: str) -> bool | None:
    """Whether an ISO date or date-time ``value`` is the one the user wrote in words or digits
    ("April 11th, 2023", "the 2nd of march 2023", "3/2/2023", "15:32") or named ("tomorrow", "on
    Friday": :func:`named_dates`, read against :func:`today`); None when ``value`` is not one. A
    model must rewrite a date into the format a parameter asks for, so its digits are rarely the
    user's; the year, month, day (and a time other than midnight) must each be there, except a
    year when the user wrote none at all: then this year or the next (the model is told today's
    date then: ``prompt.date_note``). Any other year, or a time the user did not give, is invented."""
    m = _ISO_DATE.fullmatch(value.strip())
    if m is None:
        return None
    year, month, day = int(m.group(1)), int(m.group(2)), int(m.group(3))
    try:
        date = datetime.date(year, month, day)
    except ValueError:
        return False
    ref = today()
    if date not in named_dates(user_text, ref):
        words = _words(user_text)
        # every run of digits too: "11th", "2023.10.1", "3/2/2023"
        nums = numbers_in(user_text) | {float(int(n)) for n in re.findall(r"\d+", user_text)}
        month_name = _MONTHS[month - 1]
        spellings = {month_name, month_name[:3]} | ({"sept"} if month == 9 else set())
        if not (month in nums or spellings & set(words)):
            return False
        if not (day in nums or any(_ORDINALS.get(w) == day for w in words)):
            return False
        if year not in nums and (_YEAR.search(user_text) or year not in (ref.year, ref.year + 1)):
            return False
    if m.group(4) is not None:
        hour, minute = int(m.group(4)), int(m.group(5))
        if (hour, minute) != (0, 0) and (hour, minute) not in _clocks(user_text):
            return False
    return True


def _clocks(user_text: str) -> set[tuple[int, int]]:
    """The times of day ``user_text`` gives, 24-hour ("3pm" -> (15, 0), "15:32"); a bare number is not one."""
    out = set()
    for c in _CLOCK.finditer(user_text):
        h, mi, half = int(c.group(1)), int(c.group(2) or 0), (c.group(3) or "").lower().replace(".", "")
        if c.group(2) is None and not half:
            continue
        out.add(((h % 12) + (12 if half == "pm" else 0) if half else h, mi))
    return out


def grounded(value: JSON, user_text: str, name: str = "", *, loose: bool = False) -> bool:
    """Whether ``value`` is supported by the user's words (used to drop invented arguments).

    Numbers must appear in the text (digits, ``3k``, ``5%`` or number words); strings must
    appear as a phrase or have every word present; a boolean is kept when the parameter's
    name is echoed by the user (``include_forecast`` ← "with the forecast"); lists need every
    element grounded; objects are kept. ``loose`` (used for required parameters, where a
    model must often rephrase: "US dollars" → "USD") checks numbers and dates only: an invented
    number, or a date ("2023-04-01" for "tomorrow" when the model was not told today's date), is
    the usual way a small model fills a required parameter the user never gave.
    """
    if value is None:
        return False
    if isinstance(value, str) and _PLACEHOLDER.fullmatch(value.strip()) and value.strip() not in user_text:
        return False  # "YYYY-MM-DD", "HH:MM": a format copied from the parameter's description (unless the user asked for it)
    if loose and isinstance(value, str):
        as_date = _date_grounded(value, user_text)
        return True if as_date is None else as_date
    if loose and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return True
    if isinstance(value, bool):
        vocab = set(_words(user_text))
        return any(_word_in(w, vocab) for w in _words(name.replace("_", " ")) if len(w) > 2)
    if isinstance(value, (int, float)):
        nums = numbers_in(user_text)
        return any(abs(value - n) <= 1e-9 * max(1.0, abs(n)) for n in nums)
    if isinstance(value, str):
        as_date = _date_grounded(value, user_text)
        if as_date is not None:
            return as_date
        clock = _TIME.fullmatch(value.strip())
        if clock and (int(clock.group(1)), int(clock.group(2))) in _clocks(user_text):
            return True  # "19:00" for "7pm"
        norm_v = " ".join(_words(value))
        norm_t = " ".join(_words(user_text))
        if not norm_v:
            return value.strip() != "" and value.strip() in user_text
        if f" {norm_v} " in f" {norm_t} ":
            return True
        vocab = set(norm_t.split())
        return all(_word_in(w, vocab) for w in norm_v.split())
    if isinstance(value, list):
        return bool(value) and all(grounded(v, user_text, name) for v in value)
    return True


_EDGE = " ,;:-/'\"()"
_LINKS = {"in", "of", "for", "the", "at", "on", "from"}


def split_off(raw: dict[str, JSON]) -> dict[str, JSON]:
    """Each of the user's words belongs to one argument: a string value that begins or ends
    with another argument's value loses that part (``tournament: "La Liga 2020-2021"`` beside
    ``season: "2020-2021"`` becomes ``"La Liga"``). A small model copies the whole phrase
    into the first parameter it fills. Only text at the edges is cut, never everything."""
    others = {k: str(v) for k, v in raw.items()
              if (isinstance(v, str) and len(v.strip()) >= 2) or (isinstance(v, int) and not isinstance(v, bool) and v >= 1000)}
    out = dict(raw)
    for k, v in raw.items():
        if not isinstance(v, str):
            continue
        text = v.strip()
        for j, w in others.items():
            w = w.strip()
            if j == k or not w or w.lower() == text.lower():
                continue
            low, wl = text.lower(), w.lower()
            if low.endswith(wl) and (len(low) == len(wl) or not low[-len(wl) - 1].isalnum()):
                rest = text[: -len(wl)]
            elif low.startswith(wl) and not low[len(wl)].isalnum():
                rest = text[len(wl):]
            else:
                continue
            words = rest.strip(_EDGE).split()
            while words and words[0].lower().strip(_EDGE) in _LINKS:
                words.pop(0)
            while words and words[-1].lower().strip(_EDGE) in _LINKS:
                words.pop()
            cut = " ".join(words).strip(_EDGE)
            if any(ch.isalnum() for ch in cut):
                text = cut
        if text != v.strip():
            out[k] = text
    return out
