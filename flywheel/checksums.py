"""Checksums shared by the PII redactor and the data-validation suites."""

from __future__ import annotations


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum (as every payment card number does)."""
    total = 0
    for i, char in enumerate(reversed(digits)):
        value = int(char) * (2 if i % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0
