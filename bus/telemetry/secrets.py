"""The secrets a process holds, and text with them (and anything shaped like a credential) hidden.

`secrets_of` finds every secret value the flow files configure; `Redactor` replaces them, and
credentials recognised by their shape, with `***` in any text: log lines, error messages.
"""

import base64
import binascii
import contextlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote, urlsplit

from pydantic import BaseModel, SecretStr

from bus.flows.model import FlowSet
from bus.kafka_security import kafka_security

MASK = "***"
MIN_SECRET_LENGTH = 4
"""Shorter configured values are not matched literally: `abc` would hide too much else."""

# -- which values are secret ----------------------------------------------------------------------

# Names that hold a secret wherever they appear in a flow file's mappings.
_SECRET_NAMES = frozenset(
    {
        "secret",
        "secrets",
        "password",
        "passwd",
        "token",
        "client_secret",
        "api_key",
        "apikey",
        "private_key",
    }
)
# Names that hold a secret only inside authentication settings: elsewhere `key` and `value`
# are ordinary (an event's key expression, say).
_AUTH_SECRET_NAMES = frozenset({"key", "keys", "value"})
_AUTH_BLOCKS = frozenset({"auth", "wsse", "credentials"})
# Name and secret pairs that travel joined, as HTTP Basic sends them (`user:password`).
_USER_NAMES = ("user", "username", "client_id")
_PASSWORD_NAMES = ("password", "client_secret")
_CREDENTIAL_HEADERS = re.compile(
    r"(?:proxy-)?authorization|(?:set-)?cookie|(?:[a-z0-9]+-)*(?:api-?key|token|secret|auth)",
    re.IGNORECASE,
)


def secrets_of(flows: FlowSet) -> set[str]:
    """Every secret value the flow files configure, as resolved from `${VAR}`, plus the
    values `observability.logs.redact` names.

    Adapters' settings are plugin-defined mappings, so they are read by their keys, which are
    the same for every adapter as they share `bus.auth.settings`'s shapes: `secret(s)`,
    `password`, `token`, `client_secret`, an auth block's `key(s)` and `value`, the passwords
    of `users`, credential headers' values, and the password of any URL's `user:password@`.
    Names and secrets sent joined (`user:password`, `client_id:client_secret`) are included
    joined too, as HTTP Basic sends them. The Kafka connection's SASL and TLS key passwords
    (KAFKA_SASL_PASSWORD(_FILE), KAFKA_SSL_KEY_PASSWORD(_FILE)) are the process's secrets too.
    """
    found: set[str] = set(flows.observability.logs.redact) | kafka_security().secrets()
    for file in flows.files:
        _walk(file, "", in_auth=False, found=found)
    return {secret for secret in found if secret}


def _walk(value: object, name: str, *, in_auth: bool, found: set[str]) -> None:
    in_auth = in_auth or name in _AUTH_BLOCKS
    if isinstance(value, SecretStr):
        found.add(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for field in type(value).model_fields:
            _walk(getattr(value, field), field, in_auth=in_auth, found=found)
    elif isinstance(value, Mapping):
        _mapping(value, in_auth=in_auth, found=found)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _walk(item, name, in_auth=in_auth, found=found)
    elif isinstance(value, str):
        if name in _SECRET_NAMES or (in_auth and name in _AUTH_SECRET_NAMES):
            found.add(value)
        _url_password(value, found)


def _mapping(mapping: Mapping[object, object], *, in_auth: bool, found: set[str]) -> None:
    _joined_pair(mapping, found)
    for key, item in mapping.items():
        name = str(key).lower()
        if name == "users" and in_auth and isinstance(item, Mapping):
            for user, password in item.items():
                secret = _text(password)
                if secret:
                    found |= {secret, f"{user}:{secret}"}
        elif name == "headers" and isinstance(item, Mapping):
            _credential_headers(item, found)
        _walk(item, name, in_auth=in_auth, found=found)


def _joined_pair(mapping: Mapping[object, object], found: set[str]) -> None:
    user = next((_text(mapping.get(name)) for name in _USER_NAMES if name in mapping), None)
    secret = next((_text(mapping.get(name)) for name in _PASSWORD_NAMES if name in mapping), None)
    if user and secret:
        # OAuth2 form-encodes both before joining them (RFC 6749 section 2.3.1).
        found |= {f"{user}:{secret}", f"{quote_plus(user)}:{quote_plus(secret)}"}


def _credential_headers(headers: Mapping[object, object], found: set[str]) -> None:
    for header, value in headers.items():
        text = _text(value)
        if text and _CREDENTIAL_HEADERS.fullmatch(str(header)):
            found.add(text)
            scheme, _, credential = text.partition(" ")
            if credential.strip() and scheme.isalpha():  # `Bearer <token>`: the token alone too
                found.add(credential.strip())


_USERINFO = re.compile(r"://([^@\s]*)@")


def _url_password(text: str, found: set[str]) -> None:
    if "@" not in text or "://" not in text:
        return
    passwords = set()
    host_and_port = False
    with contextlib.suppress(ValueError):  # not a URL after all (a bad port, say)
        parts = urlsplit(text.strip())
        passwords.add(parts.password)
        host_and_port = "@" not in parts.netloc and parts.port is not None
    # A password substituted from ${VAR} as it is may hold a `/`, `?` or `#` that ends the
    # authority for urlsplit (which then finds none, or the wrong one), while the text still
    # shows it whole in any message about the URL: read it up to the `@` too, unless what
    # precedes the first `/` is a host and its port (the `@` is then in the path or query).
    userinfo = _USERINFO.search(text)
    if userinfo is not None and ":" in userinfo.group(1) and not host_and_port:
        passwords.add(userinfo.group(1).partition(":")[2])
    for password in passwords:
        if password:
            # As written, and decoded as the Basic header carries it.
            found |= {password, unquote(password)}


def _text(value: object) -> str | None:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value if isinstance(value, str) else None


# -- hiding them ----------------------------------------------------------------------------------

# Each alternative starts with a case-sensitive class: the regex engine then skips the many
# places no alternative can start at, which a fully case-insensitive group would not let it.
_CREDENTIAL_WORDS = (
    r"(?:[pP](?i:ass(?:word|wd)|wd|rivate[_-]?key)|[sS](?i:ecret)|[tT](?i:oken)"
    r"|[aA](?i:pi[_-]?key|pikey))s?"
)
_HEADER_NAMES = r"(?:[aA](?i:uthorization|pi-?key)|[cC](?i:ookie)|-(?i:key|token|secret|auth))"
_QUOTE = r"\\?[\"']"
_UNQUOTED_VALUE = r"[^\s&,;\"'\\)}\]>]+"
_PATTERNS = (
    # https://user:password@host, or a token as the user: all of the userinfo.
    r"(?P<userinfo>://[^\s/?#@\"'<>]+@)",
    # Authorization: Bearer x / 'Cookie': 'a=b' / X-Api-Key: k, in header dumps: to the line's
    # (or the quoted value's) end, whatever scheme the value has. Matched from the name's
    # telling end (Proxy-Authorization, X-Auth-Token), which keeps the scan fast.
    rf"(?P<header_head>{_HEADER_NAMES}"
    rf"(?:{_QUOTE})?[ \t]*:[ \t]*(?:{_QUOTE})?)(?P<header_value>[^\r\n\"'\\]+)",
    # password=x, access_token=x (query strings, forms), "client_secret": "x" (JSON, reprs).
    rf"(?P<pair_head>{_CREDENTIAL_WORDS}(?:{_QUOTE}[ \t]*:[ \t]*|[ \t]*=[ \t]*)"
    rf"(?P<pair_quote>{_QUOTE})?)"
    rf"(?P<pair_value>(?(pair_quote)(?:(?!(?P=pair_quote))(?:\\.|[^\\\n]))+|{_UNQUOTED_VALUE}))",
    # Bearer <token>; a short plain word after it is prose ("a bearer token was refused").
    r"(?P<bearer_head>[bB](?i:earer)[ \t]+)"
    r"(?P<bearer_value>(?=[A-Za-z]*[0-9._~+/=-]|[A-Za-z]{8})[A-Za-z0-9._~+/-]+=*)",
    # Basic <base64 of user:password>; whether it is one is decided when it matched.
    r"(?P<basic_head>[bB](?i:asic)[ \t]+)(?P<basic_value>[A-Za-z0-9+/]{4,}=*)",
)
_PATTERN_STARTS = ":-aAbBcCpPsStT"
"""Every character a match of `_PATTERNS` can start with."""


def _encoded_forms(secret: str) -> set[str]:
    """The ways a secret is written in the places it travels: URL-encoded in query strings and
    forms, base64 in Basic credentials (`user:password`), escaped in JSON."""
    raw = secret.encode()
    forms = {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        # Unpadded, so that padded and unpadded both match (the padding stays, harmlessly).
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


class Redactor:
    """Replaces secrets in text with `***`: the given values (also URL-encoded, base64 and
    JSON-escaped), and credentials recognised by their shape even when no one configured them:
    credential header values (Authorization, Proxy-Authorization, Cookie, Set-Cookie,
    X-Api-Key-like), `Bearer <token>`, `Basic <base64>`, `password=`, `secret=`, `token=`,
    `api_key=`, `client_secret=` and the like in query strings, forms and JSON, and the
    `user:password@` of URLs.

    Configured values shorter than 4 characters are not matched literally: one that short
    occurs in too much ordinary text (`abc` in every `abcd`) to be told apart; the shapes above
    still hide it where it is a credential. One regular expression, compiled once, does it
    all in one pass over the text.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        forms = {
            form for secret in secrets if len(secret) >= MIN_SECRET_LENGTH
            for form in _encoded_forms(secret)
        }  # fmt: skip
        alternatives = list(_PATTERNS)
        if forms:
            alternatives.insert(0, f"(?P<literal>{_prefix_tree(forms)})")
        starts = set(_PATTERN_STARTS) | {form[0] for form in forms}
        # The lookahead lets most positions fail on one character class, before the engine
        # tries each alternative there in turn.
        gate = "".join(map(re.escape, sorted(starts)))
        self._pattern = re.compile(f"(?=[{gate}])(?:{'|'.join(alternatives)})")

    def redact(self, text: str) -> str:
        return self._pattern.sub(self._replace, text)

    def _replace(self, match: re.Match[str]) -> str:
        found = match.groupdict()
        if found.get("literal") is not None:
            return MASK
        if found["userinfo"] is not None:
            return f"://{MASK}@"
        for head in ("header_head", "pair_head", "bearer_head"):
            if found[head] is not None:
                return f"{found[head]}{MASK}"
        value = found["basic_value"]
        if _is_basic_credential(value):
            return f"{found['basic_head']}{MASK}"
        # Not a credential ("Basic authentication"); a configured secret in it still goes.
        return found["basic_head"] + self.redact(value)


def _prefix_tree(words: Iterable[str]) -> str:
    """The words as one regular expression with their common prefixes shared, so that its
    cost at a position grows with the words' length rather than their number. Where one word
    starts another, the longer one is matched."""
    tree: dict[str, Any] = {}
    for word in words:
        node = tree
        for char in word:
            node = node.setdefault(char, {})
        node[_END] = {}
    return _subtree(tree)


_END = ""  # a key no character is: the word ends here


def _subtree(node: dict[str, Any]) -> str:
    branches = []
    for first, below in sorted(node.items()):
        if first == _END:
            continue
        text, child = re.escape(first), below
        while len(child) == 1 and _END not in child:  # a chain: no group per character
            ((char, child),) = child.items()
            text += re.escape(char)
        branches.append(text + _subtree(child))
    if not branches:
        return ""
    group = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
    return f"(?:{group})?" if _END in node else group


def _is_basic_credential(text: str) -> bool:
    try:
        decoded = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        return False
    return b":" in decoded
