"""What the output hook tells the policy about a finished output: the kinds of sensitive data a
detector found in it (`context.findings`), never the text itself. Cheap, regular-expression
detectors with a checksum where one exists (Luhn for card numbers), so a policy can say
`forbid (...) when { context.findings.contains("secret") }`."""

from __future__ import annotations

import re

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_SSN = re.compile(r"(?<!\d)\d{3}-\d{2}-\d{4}(?!\d)")
_SECRETS = re.compile(
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----"  # PEM private keys
    r"|\bsk-[A-Za-z0-9_-]{20,}"  # OpenAI-style API keys
    r"|\bark_[A-Za-z0-9]{8,}_[A-Za-z0-9_-]{16,}"  # ours
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b")  # GitHub tokens


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def findings(text: str) -> set[str]:
    """The kinds found in `text`: "email", "credit_card", "us_ssn", "secret"."""
    found = set()
    if _EMAIL.search(text):
        found.add("email")
    if any(_luhn(re.sub(r"\D", "", m.group())) for m in _CARD.finditer(text)):
        found.add("credit_card")
    if _SSN.search(text):
        found.add("us_ssn")
    if _SECRETS.search(text):
        found.add("secret")
    return found
