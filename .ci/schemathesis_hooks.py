"""Schemathesis hooks for Floodgate's OpenAPI document (loaded by .ci/schemathesis).

The `user` of an event has the custom string format `floodgate-user` (see the document's
`User` schema and the README): 1 to 128 bytes of UTF-8 in NFC, not only spaces, without
control or format characters and without whitespace other than the ASCII space. JSON Schema
cannot spell NFC or a length in bytes, so this file tells schemathesis how to draw such names
for positive cases. Negative cases still negate the rest of the schema (type, length,
required fields, extra fields); a string drawn without the format counts as valid to the
validator, so it is never sent as a "must be refused" case.
"""

import unicodedata

import schemathesis
from hypothesis import strategies as st

USER_MAX_BYTES = 128


def is_valid_user(name: str) -> bool:
    """The server's rule, for the characters the strategy below can draw."""
    return (
        0 < len(name.encode("utf-8")) <= USER_MAX_BYTES
        and name.strip(" ") != ""
        and unicodedata.is_normalized("NFC", name)
    )


# Letters, numbers, punctuation and symbols, plus the ASCII space: no controls (Cc), format
# characters (Cf), marks (M: they make strings that are not in NFC), other whitespace (Z) or
# unassigned code points (Cn).
USER_CHARACTERS = st.characters(
    categories=["L", "N", "P", "S"],
    include_characters=" ",
    exclude_characters="\u2028\u2029",
)

schemathesis.openapi.format(
    "floodgate-user",
    st.text(USER_CHARACTERS, min_size=1, max_size=USER_MAX_BYTES).filter(is_valid_user),
)


# Event ids carry state across cases: a case that reuses an id an earlier case sent with
# another user or amount is rightly 422 `id_conflict`, and an `id` in the body with a different
# `Idempotency-Key` header is rightly 400 `id_mismatch`; no schema can say "unused" or "equal
# to that field". So each valid id a case carries (1 to 64 printable ASCII bytes, no outer
# space: the document's rule) is swapped for a fresh valid one, the header made equal to the body's id,
# and invalid ids (negative cases) are left as drawn.
ID_COUNTER = iter(range(1 << 62))


def is_valid_id(value) -> bool:
    return (
        isinstance(value, str)
        and 1 <= len(value) <= 64
        and all(0x20 <= ord(char) <= 0x7E for char in value)
        and not value.startswith(" ")
        and not value.endswith(" ")
    )


# Balances carry state across cases too: two schema-valid events for one user can together
# pass i64, which with a data directory is rightly 422 `balance_overflow` (the answer waits for
# the apply); no schema can say "the sum so far fits". So each valid user a POST /events case
# carries gets a suffix of its own: a first event never overflows. Only appended where it fits
# (a long name is left as drawn: long random names do not repeat), and never to a name the rule
# refuses for spaces only or NFC, so a negative case stays negative (an ASCII suffix cannot mend
# a control, format or whitespace character).
USER_COUNTER = iter(range(1 << 62))


def own_user(name: str) -> str:
    suffix = f"#{next(USER_COUNTER)}"
    if len(name.encode("utf-8")) + len(suffix) > USER_MAX_BYTES:
        return name
    return name + suffix


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    if case.operation.path != "/events" or case.method.upper() != "POST":
        return
    fresh = f"st-{next(ID_COUNTER)}"
    headers = case.headers if case.headers is not None else {}
    key_name = next((name for name in headers if name.lower() == "idempotency-key"), None)
    body = case.body if isinstance(case.body, dict) else None
    body_id = body.get("id") if body is not None else None
    if body is not None and is_valid_id(body_id):
        body["id"] = fresh
    if body is not None and isinstance(body.get("user"), str) and is_valid_user(body["user"]):
        body["user"] = own_user(body["user"])
    # HTTP strips the spaces and tabs around a header's value, so the server reads the key
    # without them (the document's pattern allows them for that reason).
    key = headers.get(key_name) if key_name is not None else None
    if isinstance(key, str) and is_valid_id(key.strip(" \t")):
        headers[key_name] = body["id"] if body is not None and is_valid_id(body.get("id")) else fresh
