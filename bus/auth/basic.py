"""HTTP Basic authentication (RFC 7617): `Authorization: Basic base64(user:password)`."""

import base64
from collections.abc import Mapping
from typing import NoReturn

from bus.auth.credentials import SecretLike, read_header, same_secret, secrets_from
from bus.errors import AuthenticationError, ConfigError


class BasicAuth:
    """Accepts a request whose Basic credentials are one of the configured user/password pairs.

    Usage::

        verifier = BasicAuth({"crm": crm_password}, realm="orders")
        user = verifier.verify(request_headers)  # raises AuthenticationError

    Every AuthenticationError carries `challenge` (`Basic realm="orders", charset="UTF-8"`) for
    the 401's WWW-Authenticate header. Credentials are UTF-8 (the charset the challenge asks
    for); user names and passwords are compared byte for byte, without Unicode normalisation.
    """

    def __init__(self, users: Mapping[str, SecretLike], *, realm: str = "bus") -> None:
        if not users:
            raise ConfigError("BasicAuth: at least one user is required")
        if any(not user or ":" in user for user in users):
            # RFC 7617: the first colon ends the user name, so a name holding one can never match.
            raise ConfigError("BasicAuth: a user name must be non-empty and have no ':'")
        passwords = secrets_from(list(users.values()), "BasicAuth passwords")
        self._users = [
            (user.encode(), password) for user, password in zip(users, passwords, strict=True)
        ]
        self.realm = realm
        quoted = realm.replace("\\", "\\\\").replace('"', '\\"')  # a quoted-string (RFC 9110)
        self.challenge = f'Basic realm="{quoted}", charset="UTF-8"'

    def __repr__(self) -> str:
        # User names are not secret, but they need not be in every log line either.
        return f"BasicAuth(realm={self.realm!r}, users=<{len(self._users)}>)"

    def verify(
        self,
        headers: Mapping[str, str],
        *,
        body: bytes = b"",
        query: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> str:
        """Return the user name that authenticated, or raise AuthenticationError.

        `body`, `query` and `now` are unused, taken so that every verifier is called alike.
        """
        value = read_header(headers, "Authorization", challenge=self.challenge)
        if value is None:
            self._refuse("missing Authorization header: Basic credentials are required")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "basic":  # scheme names are case-insensitive (RFC 9110)
            self._refuse("the Authorization header does not use the Basic scheme")
        if not token.strip():
            self._refuse("the Authorization header has no Basic credentials")
        try:
            # validate=True: refuse what is not base64 rather than skip it, as the default does.
            raw = base64.b64decode(token.strip(), validate=True)
        except ValueError:  # binascii.Error, and non-ASCII text
            self._refuse("the Basic credentials are not valid base64")
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            self._refuse("the Basic credentials are not UTF-8 text")
        user, colon, password = raw.partition(b":")  # the password may hold colons, the user not
        if not colon:
            self._refuse("the Basic credentials have no ':' between user name and password")
        matched = None
        # Every pair is compared, and both halves of each, so the time taken tells neither
        # whether the user name exists nor which pair matched.
        for name, secret in self._users:
            name_ok = same_secret(user, name)
            password_ok = same_secret(password, secret)
            if name_ok and password_ok and matched is None:
                matched = name
        if matched is None:
            self._refuse("wrong user name or password")
        return matched.decode()

    def _refuse(self, reason: str) -> NoReturn:
        raise AuthenticationError(reason, challenge=self.challenge)
