"""What leaves the machine: secrets and personal identifiers become typed placeholders.

Before a request goes to a teacher, every string in it is scanned and each secret or
identifier is replaced by ``[TYPE_n]`` (``[EMAIL_1]``, ``[PHONE_2]``): the same value gets the
same placeholder throughout one request, so the teacher can still refer to it.  Its reply
has the placeholders put back (``restore``), and only those this request issued: a
placeholder the teacher made up is an answer we cannot use.

The rules, in the order they run (a later rule never sees what an earlier one replaced):

* SECRET: private key blocks; API keys and tokens in their vendors' documented formats
  (OpenAI, Anthropic, GitHub, GitLab, Slack, AWS, Google, Stripe, Hugging Face, Telegram bots,
  npm, PyPI, SendGrid, JWTs); the value after a keyword (``password: ...``, ``api_key=...``,
  ``пароль — ...``, ``Bearer ...``); the password in a URL; any other 32+ character run
  mixing upper case, lower case and digits (hex digests and UUIDs have no upper case).
* EMAIL: an address with a domain and a top-level domain.
* IBAN: a country code, check digits and 11-30 more characters, kept only when its
  ISO 13616 checksum holds (python-stdnum).
* CARD: 13-19 digits, grouped as cards print them, kept only when the Luhn check holds.
* PASSPORT: a number after a passport keyword (English, Russian, German, French, Spanish),
  and standalone one or two capitals followed by 7-8 digits (the form of many passports).
* PHONE: what Google's libphonenumber (``phonenumbers``) finds as a *valid* number, in
  international form or national form of the configured regions; it knows dates, times and
  amounts are not phone numbers, which a regular expression does not.

Look-alikes stay: version numbers, dates, times, amounts ("12 400₸"), hashes, UUIDs.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import phonenumbers
from stdnum import iban as _iban
from stdnum import luhn as _luhn

TYPES = ("SECRET", "EMAIL", "IBAN", "CARD", "PASSPORT", "PHONE")
PLACEHOLDER = re.compile(r"\[(" + "|".join(TYPES) + r")_(\d+)\]", re.IGNORECASE)

# (start, end, type) of one finding in a text
Span = tuple[int, int, str]
Finder = Callable[[str], Iterable[Span]]


def _regex(kind: str, pattern: str, flags: int = 0, group: int = 0) -> Finder:
    rx = re.compile(pattern, flags)

    def find(text: str) -> Iterator[Span]:
        for m in rx.finditer(text):
            if m.group(group):
                yield m.start(group), m.end(group), kind

    return find


def _checked(kind: str, pattern: str, valid: Callable[[str], bool], flags: int = 0) -> Finder:
    rx = re.compile(pattern, flags)

    def find(text: str) -> Iterator[Span]:
        for m in rx.finditer(text):
            if valid(m.group(0)):
                yield m.start(), m.end(), kind

    return find


_TOKEN_FORMATS = "|".join((
    r"\bsk-(?:proj-|svcacct-|admin-|ant-(?:api|admin|oat)\d\d-)?[A-Za-z0-9_-]{20,}",  # OpenAI, Anthropic
    r"\bgh[pousr]_[A-Za-z0-9]{30,}",                   # GitHub
    r"\bgithub_pat_[A-Za-z0-9_]{40,}",
    r"\bglpat-[A-Za-z0-9_-]{20,}",                     # GitLab
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",                # Slack
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",                  # AWS access key id
    r"\bAIza[0-9A-Za-z_-]{35}",                        # Google API key
    r"\b(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}",     # Stripe secret / restricted
    r"\bhf_[A-Za-z0-9]{30,}",                          # Hugging Face
    r"\b\d{8,10}:AA[A-Za-z0-9_-]{33}",                 # Telegram bot
    r"\bnpm_[A-Za-z0-9]{36}",
    r"\bpypi-AgEIcHlwaS5vcmc[A-Za-z0-9_-]{50,}",
    r"\bSG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}",      # SendGrid
    r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWT
))
_KEYWORD = (
    r"(?:api[_ -]?key|apikey|secret[_ -]?key|client[_ -]?secret|access[_ -]?token|auth[_ -]?token|"
    r"refresh[_ -]?token|token|secret|password|passwd|pwd|passphrase|pin|пароль|токен|ключ|пин-?код)"
)
_VALUE = r"[\"'`]?([^\s\"'`,;]{4,})"


def _ibans(text: str) -> Iterator[Span]:
    # The candidate may run on into the next word ("... 0130 00 DE"): keep its longest valid prefix.
    for m in re.finditer(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}", text):
        for end in range(m.end(), m.start() + 14, -1):
            if text[end - 1] != " " and (end == len(text) or not text[end].isalnum()) and _iban.is_valid(text[m.start():end]):
                yield m.start(), end, "IBAN"
                break


def _card_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and _luhn.is_valid(digits)


_CARD = (
    r"(?<![\d.,-])(?:"
    r"\d{4}([ -]?)\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?"   # 16 or 19 digits in groups of four
    r"|\d{4}([ -]?)\d{6}\2\d{4,5}"                   # Amex, Diners
    r"|\d{13,19}"
    r")(?![\d.,-])"
)

_BEFORE_PHONES: tuple[Finder, ...] = (
    _regex("SECRET", r"-----BEGIN[A-Z ]*PRIVATE KEY-----.*?-----END[A-Z ]*PRIVATE KEY-----", re.DOTALL),
    _regex("SECRET", _TOKEN_FORMATS),
    _regex("SECRET", r"\b" + _KEYWORD + r"\b\s*(?:[:=]|\bis\b|—|–|это)\s*" + _VALUE, re.IGNORECASE, group=1),
    _regex("SECRET", r"\bbearer\s+([A-Za-z0-9._~+/-]{12,}=*)", re.IGNORECASE, group=1),
    _regex("SECRET", r"\b[a-z][a-z0-9+.-]*://[^\s:/@]+:([^\s@/]+)@", re.IGNORECASE, group=1),
    _regex("SECRET", r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*[A-Z])(?=[A-Za-z0-9_-]*[a-z])(?=[A-Za-z0-9_-]*\d)"
                     r"[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])"),
    _regex("EMAIL", r"(?<![\w.+-])[\w][\w.%+-]*@[\w](?:[\w-]*[\w])?(?:\.[\w](?:[\w-]*[\w])?)*\.[^\W\d_]{2,}\b"),
    _ibans,
    _checked("CARD", _CARD, _card_ok),
    _regex("PASSPORT", r"\b(?:passport|паспорт\w*|reisepass|passeport|pasaporte)\b[^\d\n]{0,25}?"
                       r"\b((?=(?:[A-Z]*\d){4})[A-Z0-9]{6,10}|\d{2} ?\d{2} ?\d{6})\b", re.IGNORECASE, group=1),
    _regex("PASSPORT", r"\b[A-Z]{1,2}\d{7,8}\b"),
)


@dataclass
class Redactor:
    """One request's redaction: the placeholders it issued, to put back into the reply."""

    phone_regions: Sequence[str] = ("US",)
    placeholders: dict[str, str] = field(default_factory=dict)  # value -> placeholder
    originals: dict[str, str] = field(default_factory=dict)     # placeholder -> value
    counts: Counter = field(default_factory=Counter)           # replacements made, by type
    _next: Counter = field(default_factory=Counter)

    def _placeholder(self, kind: str, value: str) -> str:
        if value not in self.placeholders:
            self._next[kind] += 1
            ph = f"[{kind}_{self._next[kind]}]"
            self.placeholders[value] = ph
            self.originals[ph] = value
        self.counts[kind] += 1
        return self.placeholders[value]

    def _replace(self, text: str, spans: Iterable[Span]) -> str:
        taken: list[Span] = []
        for s in sorted(spans):
            if not taken or s[0] >= taken[-1][1]:  # overlapping findings: the first one wins
                taken.append(s)
        out, pos = [], 0
        for start, end, kind in taken:
            out += [text[pos:start], self._placeholder(kind, text[start:end])]
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def _phones(self, text: str) -> Iterator[Span]:
        for region in self.phone_regions:
            for m in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
                yield m.start, m.end, "PHONE"

    def text(self, text: str) -> str:
        for find in _BEFORE_PHONES:
            text = self._replace(text, list(find(text)))
        return self._replace(text, list(self._phones(text)))

    def value(self, obj: Any, skip_keys: frozenset[str] = frozenset({"role", "id", "tool_call_id", "type", "name"})) -> Any:
        """Every string in JSON-like data, except under ``skip_keys`` (roles, ids, tool names)."""
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, list):
            return [self.value(v, skip_keys) for v in obj]
        if isinstance(obj, dict):
            return {k: v if k in skip_keys else self.value(v, skip_keys) for k, v in obj.items()}
        return obj

    def restore(self, reply: str) -> str:
        """The reply with this request's placeholders put back; ValueError on one it never issued."""

        def back(m: re.Match[str]) -> str:
            ph = f"[{m.group(1).upper()}_{m.group(2)}]"
            if ph not in self.originals:
                raise ValueError(f"the reply has a placeholder {m.group(0)} that was never sent")
            return self.originals[ph]

        return PLACEHOLDER.sub(back, reply)


def redact_text(text: str, phone_regions: Sequence[str] = ("US",)) -> str:
    """One text, redacted (a new Redactor: placeholders numbered from 1)."""
    return Redactor(phone_regions).text(text)
