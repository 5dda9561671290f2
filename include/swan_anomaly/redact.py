"""Credentials out of what people and logs see: URIs with their passwords and signed query values masked.

A tracking URI such as ``postgresql://mlflow:s3cret@db/mlflow`` or ``https://user:token@host``
names a secret. Wherever such a URI is shown (the model server's ``/health``, log lines, the run
summary, rendered templates), :func:`redact_uri` shows it instead: the host stays readable, the
password (and a token used as user name) and signed query values (SAS ``sig``, ``token``, ...)
become ``***``.

Example:
    >>> redact_uri("postgresql://mlflow:s3cret@db:5432/mlflow")
    'postgresql://mlflow:***@db:5432/mlflow'
    >>> redact_uri("https://dapi0123@adb-1.azuredatabricks.net/?sig=abc&sv=2024")
    'https://***@adb-1.azuredatabricks.net/?sig=***&sv=2024'
    >>> redact_uri("sqlite:////home/me/.swan/mlflow/mlflow.db"), redact_uri("databricks-uc")
    ('sqlite:////home/me/.swan/mlflow/mlflow.db', 'databricks-uc')
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
#: Query parameters whose values are credentials (Azure SAS, presigned URLs, tokens in URLs).
SECRET_QUERY_KEYS = frozenset(
    {"sig", "signature", "token", "access_token", "password", "secret", "key", "pwd"}
    | {"x-amz-signature", "x-amz-security-token", "x-goog-signature"}
)
#: Query parameters that carry a whole connection string, its password inside (ODBC's ``PWD=``).
_CONNECTION_STRING_KEYS = frozenset({"odbc_connect", "connection_string", "connectionstring"})
_QUERY_PAIR = re.compile(r"(?P<key>[^&=]+)=(?P<value>[^&]*)")


def _secret_query_key(key: str) -> bool:
    """Whether a query parameter named ``key`` holds a credential: one of :data:`SECRET_QUERY_KEYS`, a connection
    string, or named as a secret's variable is (:data:`SECRET_NAME`: ``api_key``, ``client_secret``, ``sslpassword``)."""
    key = key.lower()
    return key in SECRET_QUERY_KEYS or key in _CONNECTION_STRING_KEYS or SECRET_NAME.search(key.replace("-", "_")) is not None


#: User info as SQLAlchemy's URL grammar reads it (``sqlalchemy.engine.url._parse_url``): a user name up to the
#: first ``:`` or ``/``, then an optional password running to the next ``@``, where ``/``, ``?`` and ``#`` may occur
#: (``postgresql://u:pa/ss@db`` has the password ``pa/ss``; ``urlsplit`` would end the authority at the ``/``).
_SQLALCHEMY_USERINFO = re.compile(r"^(?P<scheme>[\w+]+://)(?P<user>[^:/]*)(?P<password>:[^@]*)?@")
#: Schemes read as URLs by HTTP clients (urllib3 ends the authority at the first ``/``, ``?`` or ``#``, as
#: ``urlsplit`` does); any other scheme is read both ways, as a database URL could be.
_WEB_SCHEMES = frozenset({"http", "https", "file"})


def has_credentials(uri: str | None) -> bool:
    """Whether ``uri`` names a secret (a password or token in its user info or query).

    Example:
        >>> has_credentials("https://u:p@mlflow.example.com"), has_credentials("http://mlflow:5000")
        (True, False)
    """
    return redact_uri(uri) != uri


#: Variables that hold secrets by name (a whole word of it: TOKENIZERS_PARALLELISM is not one; a password
#: anywhere in it, as in PGPASSWORD; and the well-known ones named otherwise): a child process that needs
#: none of them gets none of them. PWD, the working directory, is not one.
SECRET_NAME = re.compile(
    r"(^|_)(TOKEN|SECRET|PASS|PASSPHRASE|CREDENTIALS?|API_KEY|ACCESS_KEY|ACCOUNT_KEY|SECRET_KEY|CONNECTION_STRING|KEY)(_|$)"
    r"|PASSWORD|PASSWD|^(SSHPASS|MYSQL_PWD)$",
    re.I,
)
#: Variables whose URI may hold a login and still be what a child process needs: the route out (a proxy) and
#: the model hub's address. Their values are not dropped for the credentials in them.
ROUTE_VARIABLES = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy", "hf_endpoint"})
#: Prefixes of variables that carry credentials or connections a job does not need (Airflow's own, cloud SDKs').
SECRET_PREFIXES = ("AIRFLOW_CONN_", "AIRFLOW_VAR_", "AIRFLOW__", "DATABRICKS_", "AZURE_", "AWS_", "GOOGLE_", "ARM_")


def without_secrets(environ, *, keep: frozenset[str] = frozenset()) -> dict[str, str]:
    """``environ`` without the variables that hold secrets, except ``keep``.

    A secret's variable is named like one (:data:`SECRET_NAME`, :data:`SECRET_PREFIXES`) or holds a URI
    with credentials in it (:func:`has_credentials`: a database-backed MLflow store's password, a Redis URL's),
    except a proxy's or the model hub's address (:data:`ROUTE_VARIABLES`), the route out a job needs.
    What a local job subprocess gets: everything Spark, Java and PyTorch may read, no key it does
    not need.

    Example:
        >>> sorted(without_secrets({"PATH": "/bin", "DATABRICKS_TOKEN": "d", "AIRFLOW_CONN_X": "c", "MLFLOW_TRACKING_PASSWORD": "p"},
        ...                        keep=frozenset({"MLFLOW_TRACKING_PASSWORD"})))
        ['MLFLOW_TRACKING_PASSWORD', 'PATH']
    """
    return {
        k: v
        for k, v in environ.items()
        if k in keep
        or not (
            SECRET_NAME.search(k)
            or k.startswith(SECRET_PREFIXES)
            or (k.lower() not in ROUTE_VARIABLES and "://" in v and has_credentials(v))
        )
    }


def redact_uri(uri: str | None) -> str | None:
    """``uri`` with the password of its user info and the values of secret query parameters masked.

    A user name without a password is masked too: in ``https://<token>@host`` the user name is
    the credential. The user info of a database URL is masked both as SQLAlchemy reads it (a
    password may hold ``/``, ``?`` or ``#``) and as ``urlsplit`` does (up to the authority's last
    ``@``); an ``http``, ``https`` or ``file`` URL as HTTP clients read it, the second way.
    Anything that does not parse as a URI comes back unchanged.
    """
    if not uri or "://" not in uri:
        return uri
    masked = uri
    userinfo = _SQLALCHEMY_USERINFO.match(uri)
    if userinfo and userinfo["scheme"][:-3].lower() not in _WEB_SCHEMES:
        # a database URL: masked as SQLAlchemy reads it, then below as urlsplit does (the union of both)
        shown = f"{userinfo['user']}:{MASK}" if userinfo["password"] is not None else MASK
        masked = f"{userinfo['scheme']}{shown}@{uri[userinfo.end() :]}"
    try:
        parts = urlsplit(masked)
    except ValueError:
        return MASK if masked != uri else uri
    netloc = parts.netloc
    if "@" in netloc:
        user_part, _, hostport = netloc.rpartition("@")
        user, has_password, _ = user_part.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if has_password else f"{MASK}@{hostport}"
    query = _QUERY_PAIR.sub(
        lambda m: f"{m['key']}={MASK}" if _secret_query_key(m["key"]) else m.group(0),
        parts.query,
    )
    if (netloc, query) == (parts.netloc, parts.query):
        return masked  # urlunsplit would drop the empty authority of sqlite:////abs/path
    if netloc or "://" not in masked:
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    # an empty authority (file:///tmp/x, mssql+pyodbc:///?odbc_connect=...), which urlunsplit keeps for some schemes only
    return (
        f"{masked[: masked.index('://')]}://{parts.path}"
        + (f"?{query}" if query else "")
        + (f"#{parts.fragment}" if parts.fragment else "")
    )
