"""What leaves the machine for a teacher: every secret and identifier becomes a typed placeholder,
look-alikes (versions, dates, times, amounts, hashes) stay, and only our placeholders come back."""

from __future__ import annotations

import pytest

from nightlora.teachers.redact import Redactor

REGIONS = ("US", "GB", "DE", "FR", "RU")

# (text, the secret or identifier in it, its placeholder type): real-looking, in the formats people paste.
SECRETS = [
    ("my key is sk-proj-AbCdEf1234567890AbCdEf1234567890", "sk-proj-AbCdEf1234567890AbCdEf1234567890", "SECRET"),
    ("use sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCd", "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-_AbCd", "SECRET"),
    ("token ghp_16C7e42F292c6912E7710c838347Ae178B4a here", "ghp_16C7e42F292c6912E7710c838347Ae178B4a", "SECRET"),
    ("AWS id AKIAIOSFODNN7EXAMPLE", "AKIAIOSFODNN7EXAMPLE", "SECRET"),
    ("slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "SECRET"),
    ("maps AIzaSyA-1234567890abcdefghijklmnopqrstu", "AIzaSyA-1234567890abcdefghijklmnopqrstu", "SECRET"),
    ("bot 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0", "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0", "SECRET"),
    ("hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567", "SECRET"),
    ("stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc", "sk_live_4eC39HqLyjWDarjtT1zdp7dc", "SECRET"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
     "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U", "SECRET"),
    ("Authorization: Bearer abcdef1234567890ghijkl", "abcdef1234567890ghijkl", "SECRET"),
    ("password: hunter22", "hunter22", "SECRET"),
    ("мой пароль — Qwerty!23", "Qwerty!23", "SECRET"),
    ("api_key=9f8e7d6c5b4a", "9f8e7d6c5b4a", "SECRET"),
    ("db at postgres://admin:s3cretPass@db.example.com/app", "s3cretPass", "SECRET"),
    ("a random token Zq8Lm3Np7Rt2Vx6Bc9Df4Gh1Jk5Mn0Pq8", "Zq8Lm3Np7Rt2Vx6Bc9Df4Gh1Jk5Mn0Pq8", "SECRET"),
    ("-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
     "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----", "SECRET"),
    ("write to olga.ivanova@example.com please", "olga.ivanova@example.com", "EMAIL"),
    ("почта: ольга@пример.рф", "ольга@пример.рф", "EMAIL"),
    ("call +7 701 123 45 67 tonight", "+7 701 123 45 67", "PHONE"),
    ("звони 8 (701) 123-45-67", "8 (701) 123-45-67", "PHONE"),
    ("office (415) 555-2671", "(415) 555-2671", "PHONE"),
    ("London 020 7946 0958", "020 7946 0958", "PHONE"),
    ("Berlin +49 30 901820", "+49 30 901820", "PHONE"),
    ("card 4111 1111 1111 1111 exp 12/27", "4111 1111 1111 1111", "CARD"),
    ("card 5555-5555-5555-4444", "5555-5555-5555-4444", "CARD"),
    ("amex 3782 822463 10005", "3782 822463 10005", "CARD"),
    ("mir 2200770212727079", "2200770212727079", "CARD"),
    ("IBAN DE89 3704 0044 0532 0130 00 is mine", "DE89 3704 0044 0532 0130 00", "IBAN"),
    ("KZ86125KZT5004100100", "KZ86125KZT5004100100", "IBAN"),
    ("GB82 WEST 1234 5698 7654 32", "GB82 WEST 1234 5698 7654 32", "IBAN"),
    ("passport N12345678", "N12345678", "PASSPORT"),
    ("паспорт 4510 123456, выдан", "4510 123456", "PASSPORT"),
    ("my passport number is 123456789", "123456789", "PASSPORT"),
    ("Reisepass Nr. C01X00T47", "C01X00T47", "PASSPORT"),
    ("passeport 12AB34567", "12AB34567", "PASSPORT"),
    ("and AB1234567 too", "AB1234567", "PASSPORT"),
]

# Text that looks like one of the above and must reach the teacher as it is.
LOOK_ALIKES = [
    "version 2.13.0", "v1.2.3-rc1", "Python 3.11.4", "torch==2.13.0", "on 2025-03-01", "12.05.2024", "2024/05/12 10:30:15",
    "at 14:30", "20:00", "10 km in 45:12", "12 400₸", "$1,299.99", "1 000 000 руб", "20 000 000", "up 12%, 3.5 kg",
    "+5°C", "ISBN 978-3-16-148410-0", "123e4567-e89b-12d3-a456-426614174000",
    "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3", "SHA256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "127.0.0.1:8234", "room 1204", "in 1999", "3 AM", "[Action result: reminder created for 20:00]",
    "[Current context]\nToday: 2026-02-13, Thursday\nTime: 14:30", "call_00012", "the secret is out", "RTX4090",
    "A100 GPU", "order 2024-01-01 2024-01-02", "4111 1111 1111 1112", "DE89 3704 0044 0532 0130 01",
    "https://example.com/watch?v=dQw4w9WgXcQ", "user@localhost", "@property", "tel. 123", "Tel Aviv 2024",
    "ПИН-код не скажу", "a password manager", "passport photo booth", "my passport expires on 2027-05-01",
]


@pytest.mark.parametrize("text,secret,kind", SECRETS, ids=[f"{k}:{s[:18]}" for _, s, k in SECRETS])
def test_secret_becomes_a_typed_placeholder(text: str, secret: str, kind: str) -> None:
    r = Redactor(REGIONS)
    out = r.text(text)
    assert secret not in out
    assert f"[{kind}_1]" in out, out
    assert r.originals[f"[{kind}_1]"] == secret
    assert out.replace(f"[{kind}_1]", secret) == text  # nothing else changed


@pytest.mark.parametrize("text", LOOK_ALIKES)
def test_look_alike_survives(text: str) -> None:
    r = Redactor(REGIONS)
    assert r.text(text) == text
    assert not r.counts


def test_same_value_same_placeholder_across_a_request_and_restored() -> None:
    r = Redactor(REGIONS)
    messages = [
        {"role": "user", "content": "I'm olga@example.com, my colleague is ivan@example.com"},
        {"role": "assistant", "content": "Noted olga@example.com.", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "send_mail", "arguments": '{"to": "ivan@example.com", "phone": "+7 701 123 45 67"}'}}]},
    ]
    out = r.value(messages)
    assert out[0]["content"] == "I'm [EMAIL_1], my colleague is [EMAIL_2]"
    assert out[1]["content"] == "Noted [EMAIL_1]."
    assert out[1]["tool_calls"][0]["function"] == {"name": "send_mail", "arguments": '{"to": "[EMAIL_2]", "phone": "[PHONE_1]"}'}
    assert out[1]["tool_calls"][0]["id"] == "call_1" and out[0]["role"] == "user"
    assert r.counts == {"EMAIL": 4, "PHONE": 1}
    assert r.restore("Sent to [EMAIL_2], I'll call [phone_1].") == "Sent to ivan@example.com, I'll call +7 701 123 45 67."


def test_a_placeholder_the_teacher_made_up_is_refused() -> None:
    r = Redactor(REGIONS)
    r.text("mail me: olga@example.com")
    with pytest.raises(ValueError, match=r"\[EMAIL_2\]"):
        r.restore("I wrote to [EMAIL_2]")
    with pytest.raises(ValueError, match="PHONE_1"):
        r.restore("Call [PHONE_1]")
