"""Personal data detectors: candidates found by pattern, then validated.

E-mail addresses, phone numbers, payment cards (Luhn + issuer ranges), IBANs (per-country length
+ mod-97), US social security numbers (invalid ranges rejected), IPv4/IPv6 addresses (parsed by
`ipaddress`) and dates of birth introduced by a context phrase. Offsets are code points.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Iterator

from services.safety.findings import Detection

# ---------------------------------------------------------------------------------------- e-mail
_EMAIL = re.compile(
    r"(?<![\w.%+-])([A-Za-z0-9][A-Za-z0-9._%+-]{0,63})@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z]{2,63})(?![\w-]|\.[A-Za-z0-9])"
)


def find_emails(text: str) -> Iterator[Detection]:
    for m in _EMAIL.finditer(text):
        local = m.group(1)
        if local.endswith(".") or ".." in local:
            continue
        yield Detection("EMAIL", m.start(), m.end(), 0.99, "email", m.group(0))


# ----------------------------------------------------------------------------------------- cards
_CARD = re.compile(r"(?<![\d-])(?<!\d )\d(?:[ -]?\d){11,18}(?![ -]?\d)")


def luhn_valid(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_network(digits: str) -> str | None:
    """The card network whose issuer range and length fit `digits`, if any."""
    n = len(digits)
    two, three, four, six = int(digits[:2]), int(digits[:3]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= two <= 55 or 2221 <= four <= 2720) and n == 16:
        return "mastercard"
    if two in (34, 37) and n == 15:
        return "amex"
    if (four == 6011 or two == 65 or 644 <= three <= 649 or 622126 <= six <= 622925) and 16 <= n <= 19:
        return "discover"
    if 3528 <= four <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (300 <= three <= 305 or two in (36, 38, 39) or three == 309) and 14 <= n <= 19:
        return "diners"
    if two == 62 and 16 <= n <= 19:
        return "unionpay"
    if (two == 50 or 56 <= two <= 69) and 12 <= n <= 19:
        return "maestro"
    return None


def find_cards(text: str) -> Iterator[Detection]:
    for m in _CARD.finditer(text):
        raw = m.group(0)
        separators = {c for c in raw if not c.isdigit()}
        if len(separators) > 1:
            continue
        digits = raw.replace(" ", "").replace("-", "")
        network = card_network(digits)
        if network is None or not luhn_valid(digits):
            continue
        yield Detection("CREDIT_CARD", m.start(), m.end(), 0.99, f"card:{network}", raw)


# ------------------------------------------------------------------------------------------ IBAN
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
_IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})\d{2}")
_IBAN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def iban_valid(compact: str) -> bool:
    """Whether a compact (no spaces) IBAN has its country's length and passes mod-97."""
    if IBAN_LENGTHS.get(compact[:2]) != len(compact):
        return False
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return int(number) % 97 == 1


def find_ibans(text: str) -> Iterator[Detection]:
    for m in _IBAN_START.finditer(text):
        length = IBAN_LENGTHS.get(m.group(1))
        if length is None:
            continue
        # Consume exactly the country's number of characters, allowing single spaces between
        # groups, so a following upper-case word is never swallowed.
        i, seen = m.start(), 0
        while i < len(text) and seen < length:
            if text[i] in _IBAN_CHARS:
                seen += 1
            elif not (text[i] == " " and i + 1 < len(text) and text[i + 1] in _IBAN_CHARS):
                break
            i += 1
        if seen != length or (i < len(text) and text[i].isalnum()):
            continue
        raw = text[m.start() : i]
        if iban_valid(raw.replace(" ", "")):
            yield Detection("IBAN", m.start(), i, 0.99, "iban:mod97", raw)


# ------------------------------------------------------------------------------------------- SSN
_SSN = re.compile(r"(?<![\d-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d-])")
_SSN_CONTEXT = re.compile(
    r"(?i)\b(?:ssn|social\s+security(?:\s+(?:number|no\.?|#))?)\s*(?:is|:|#|=)?\s*(\d{3}-?\d{2}-?\d{4})(?!\d)"
)


def ssn_valid(area: str, group: str, serial: str) -> bool:
    """Whether the parts form an SSN the SSA could issue (area 000/666/9xx, group 00, serial 0000 never)."""
    a = int(area)
    return a != 0 and a != 666 and a < 900 and group != "00" and serial != "0000"


def find_ssns(text: str) -> Iterator[Detection]:
    seen: set[int] = set()
    for m in _SSN_CONTEXT.finditer(text):
        digits = m.group(1).replace("-", "")
        if ssn_valid(digits[:3], digits[3:5], digits[5:]):
            seen.add(m.start(1))
            yield Detection("US_SSN", m.start(1), m.end(1), 0.97, "ssn:context", m.group(1))
    for m in _SSN.finditer(text):
        if m.start() in seen or not ssn_valid(m.group(1), m.group(3), m.group(4)):
            continue
        score = 0.85 if m.group(2) == "-" else 0.6
        yield Detection("US_SSN", m.start(), m.end(), score, "ssn:format", m.group(0))


# ------------------------------------------------------------------------------------ IP address
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})?(?![\w:])"
)


def find_ips(text: str) -> Iterator[Detection]:
    for m in _IPV4.finditer(text):
        try:
            ipaddress.IPv4Address(m.group(0))
        except ValueError:
            continue
        yield Detection("IP_ADDRESS", m.start(), m.end(), 0.9, "ipv4", m.group(0))
    for m in _IPV6.finditer(text):
        raw = m.group(0)
        if sum(c.isalnum() for c in raw) < 2:
            continue
        try:
            ipaddress.IPv6Address(raw)
        except ValueError:
            continue
        yield Detection("IP_ADDRESS", m.start(), m.end(), 0.9, "ipv6", raw)


# ---------------------------------------------------------------------------------------- phones
_PHONE_INTL = re.compile(r"(?<![\w+])(?:\+|00)[1-9][\d \-.()]{6,22}\d(?!\w)")
_PHONE_NANP = re.compile(
    r"(?<![\w+\-.])(?:1[ .-])?(?:\(([2-9]\d{2})\) ?|([2-9]\d{2})[ .-])([2-9]\d{2})[ .-](\d{4})(?![\w\-]|\.\d)"
)
_PHONE_TRUNK = re.compile(r"(?<![\w+\-./])0\d{1,4}(?:[ /-]\d{2,8}){1,4}(?![\w\-/]|\.\d)")
_DATE_LIKE = re.compile(r"^\d{1,4}[/.-]\d{1,2}[/.-]\d{1,4}$")
_PHONE_CONTEXT = re.compile(r"(?i)\b(?:phone|tel|mobile|cell|call|fax|whatsapp|number)\b")


def _phone_score(text: str, start: int, base: float) -> float:
    window = text[max(0, start - 30) : start]
    return min(0.99, base + 0.1) if _PHONE_CONTEXT.search(window) else base


def find_phones(text: str) -> Iterator[Detection]:
    for m in _PHONE_INTL.finditer(text):
        raw = m.group(0)
        digits = re.sub(r"\D", "", raw[2:] if raw.startswith("00") else raw)
        if not 8 <= len(digits) <= 15 or raw.count("(") != raw.count(")"):
            continue
        base = 0.6 if raw.startswith("00") else 0.85
        yield Detection("PHONE", m.start(), m.end(), _phone_score(text, m.start(), base), "phone:e164", raw)
    for m in _PHONE_NANP.finditer(text):
        yield Detection(
            "PHONE", m.start(), m.end(), _phone_score(text, m.start(), 0.75), "phone:nanp", m.group(0)
        )
    for m in _PHONE_TRUNK.finditer(text):
        raw = m.group(0)
        digits = re.sub(r"\D", "", raw)
        if not 9 <= len(digits) <= 12 or _DATE_LIKE.match(raw):
            continue
        yield Detection(
            "PHONE", m.start(), m.end(), _phone_score(text, m.start(), 0.7), "phone:national", raw
        )


# --------------------------------------------------------------------------------- date of birth
_MONTHS = (
    "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
    "sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
)
_DOB = re.compile(
    r"(?i)\b(?:born(?:\s+on)?|date\s+of\s+birth|d\.?o\.?b\.?|birth\s*date|birthday)\s*(?:is|was|:|-)?\s*"
    r"(\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?(?:{_MONTHS})\.?,?\s+\d{{4}}"
    rf"|(?:{_MONTHS})\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}})(?!\d)"
)
_MONTH_NUMBER = {name: i + 1 for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
)}  # fmt: skip


def _plausible_birth_date(raw: str) -> bool:
    """Whether `raw` can be read as a real calendar date in a plausible birth year range."""
    today = dt.date.today()
    low = dt.date(today.year - 130, 1, 1)
    nums = [int(x) for x in re.findall(r"\d+", raw)]
    words = re.findall(r"[A-Za-z]+", raw)
    month_word = next((_MONTH_NUMBER[w[:3].lower()] for w in words if w[:3].lower() in _MONTH_NUMBER), None)
    candidates: list[tuple[int, int, int]] = []
    if month_word is not None and len(nums) == 2:
        day, year = (nums[0], nums[1]) if nums[1] > 31 else (nums[1], nums[0])
        candidates.append((year, month_word, day))
    elif len(nums) == 3:
        a, b, c = nums
        if a > 31:
            candidates.append((a, b, c))
        else:
            year = c + (1900 if 30 < c < 100 else 2000 if c <= 30 else 0)
            candidates += [(year, b, a), (year, a, b)]
    for year, month, day in candidates:
        try:
            date = dt.date(year, month, day)
        except ValueError:
            continue
        if low <= date <= today:
            return True
    return False


def find_dates_of_birth(text: str) -> Iterator[Detection]:
    for m in _DOB.finditer(text):
        if _plausible_birth_date(m.group(1)):
            yield Detection("DATE_OF_BIRTH", m.start(1), m.end(1), 0.9, "dob:context", m.group(1))


def find_pii(text: str) -> list[Detection]:
    """Every personal-data finding in `text`, overlaps not yet resolved."""
    found: list[Detection] = []
    for finder in (
        find_emails,
        find_cards,
        find_ibans,
        find_ssns,
        find_ips,
        find_phones,
        find_dates_of_birth,
    ):
        found.extend(finder(text))
    return found
