"""The one secret rule: which names and values are secrets, for every value that reaches a script, a file or the
console (dotenv packs, train and datagen configs, profile values, and the rendered launch itself).

A secret is refused with one line naming where it is and where secrets belong: the user's own secrets file
(DC_AGENT_SECRET_ENV), which jobs source by path at run time. Values are checked as they will be used, after
interpolation. The name rule also exists as POSIX extended regular expressions (SECRET_NAME_ERE, LOCATION_ERE) so
that job scripts can unset secret-looking variables with the same rule (bash's `[[ =~ ]]`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

from hpc.errors import LaunchError

SECRETS_ENV = "DC_AGENT_SECRET_ENV"
FIX = f"move it to your own secrets file (${SECRETS_ENV}), which jobs source at run time"

#: Secret-looking names (upper-cased), by their `_`-separated words: any word with SECRET, PASSWORD, PASSWD,
#: PASSPHRASE or CREDENTIAL in it; a word ending in TOKEN(S) or KEY(S) (HF_TOKEN, HF_TOKENS, API_KEY, APIKEY,
#: SUPABASE_SERVICE_ROLE_KEY); the words PASS, PAT, CREDS, COOKIE, AUTH, AUTHZ, AUTHORIZATION.
SECRET_NAME_ERE = (r"SECRET|PASSWORD|PASSWD|PASSPHRASE|CREDENTIAL|(TOKEN|KEY)S?(_|$)"
                   r"|(^|_)(PASS|PAT|CREDS|COOKIE|AUTH|AUTHZ|AUTHORIZATION)(_|$)")
#: Names that only locate something (DC_AGENT_SECRET_ENV, SSH_KEY_PATH, ...). SSH_KEY is the path of the tunnel's
#: key file (README: "Optional tunnel"), so it is one too; its value must then be a path, not the key.
LOCATION_ERE = r"^(.*_(FILE|FILES|PATH|PATHS|DIR|DIRS|ENV)|SSH_KEY)$"
_SECRET_NAME = re.compile(SECRET_NAME_ERE)
_LOCATION = re.compile(LOCATION_ERE)
#: Config keys that match the name rule but name vocabulary tokens, not credentials (LLaMA-Factory's
#: new_special_tokens and add_tokens, a tokenizer's pad_token or eos_token, a sampler's stop_token_ids).
_VOCABULARY_KEY = re.compile(r"(^|_)(pad|eos|bos|unk|sep|cls|mask|stop|special|add)_tokens?(_ids?)?$", re.IGNORECASE)

_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^\s@]*)@")
#: Schemes whose userinfo without a password is a login name (ssh://user@host), not a credential.
_LOGIN_SCHEMES = frozenset({"ssh", "sftp", "git+ssh", "ssh+git"})
#: Credentials with a published shape: Hugging Face, GitHub, OpenAI/Anthropic-style, Slack, AWS access key ids, JWTs
#: (Supabase keys are JWTs).
_TOKEN_SHAPES = re.compile(
    r"\bhf_[A-Za-z0-9]{30,}|\bgh[pousr]_[A-Za-z0-9]{30,}|\bgithub_pat_\w{30,}|\bsk-[A-Za-z0-9_-]{20,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}|\bAKIA[0-9A-Z]{16}\b|\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}"
)
#: A login secret shorter than this is not looked for in values (it would match by chance).
MIN_SECRET_LENGTH = 8


def secret_name(name: str) -> bool:
    """Whether a variable or key name looks like it holds a secret (names that only locate something do not)."""
    upper = name.upper()
    return bool(_SECRET_NAME.search(upper)) and not _LOCATION.match(upper)


def secret_setting(key: object, value: object) -> bool:
    """Whether a config's key/value pair is a secret by its name: text under a secret-looking key that does not name
    vocabulary tokens (numbers, booleans and empty values are not secrets)."""
    return (isinstance(value, str) and bool(value) and secret_name(str(key))
            and not _VOCABULARY_KEY.search(str(key)))


def login_secrets(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The login environment's secret-named variables that hold a value long enough to look for."""
    return {name: value for name, value in environ.items() if secret_name(name) and len(value) >= MIN_SECRET_LENGTH}


def _url_credentials(text: str) -> bool:
    """A URL with userinfo: user:password@, token@, or a password holding '/' (postgres://u:pa/ss@h); a port
    before a path with '@' in it (http://h:8080/m@v2, http://[::1]:8080/m@v2) is not one, nor is an ssh login name
    (ssh://user@host:22)."""
    for match in _URL.finditer(text):
        scheme, userinfo = match.group(1).lower(), match.group(2)
        head, slash, _ = userinfo.partition("/")
        if not slash:
            if scheme in _LOGIN_SCHEMES and ":" not in userinfo:
                continue
            return True
        if head.startswith("[") and "]" in head:  # an IPv6 host: only a port may follow it
            head = head[head.index("]") + 1:]
        _, colon, after = head.partition(":")
        if colon and not after.isdigit():
            return True
    return False


def value_problem(text: str, secrets: Mapping[str, str]) -> str | None:
    """What makes a value a secret, or None: a URL with credentials, a private key, a token of a known shape, or the
    value of one of `secrets` (login_secrets)."""
    if _url_credentials(text):
        return "a password or token in a URL (user:password@ or token@)"
    if "-----BEGIN" in text:
        return "a private key (a PEM block)"
    if _TOKEN_SHAPES.search(text):
        return "an access token"
    for name, secret in secrets.items():
        if secret in text:
            return f"the value of your login variable {name}"
    return None


def check_config(where: str, config: object, environ: Mapping[str, str] = os.environ) -> None:
    """Every key and value of a config (nested mappings and lists): a secret-named key with a text value, or a value
    that holds a secret, is refused. Numbers and booleans under secret-looking names (max_new_tokens: 512) are not
    secrets, nor are vocabulary tokens (pad_token: "<pad>")."""
    secrets = login_secrets(environ)

    def walk(value: object, path: str) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                inner = f"{path}.{key}" if path else str(key)
                if secret_setting(key, item):
                    raise LaunchError(f"{where}: {inner} looks like a secret; {FIX} (jobs read it from the "
                                      "environment)")
                walk(item, inner)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")
        elif isinstance(value, str) and (problem := value_problem(value, secrets)):
            raise LaunchError(f"{where}: the value of {path or 'the config'} holds {problem}; {FIX}")

    walk(config, "")


def check_output(what: str, text: str, environ: Mapping[str, str] = os.environ) -> None:
    """The last gate before a file is written or a preview printed: no login secret's value in it."""
    for name, secret in login_secrets(environ).items():
        if secret in text:
            raise LaunchError(f"{what} would contain the value of your login variable {name}; find the option or "
                              f"file that copies it in and {FIX}")
