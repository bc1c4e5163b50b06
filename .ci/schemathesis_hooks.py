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
