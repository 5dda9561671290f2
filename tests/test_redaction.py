"""Passwords and tokens in URIs never reach what is shown: ``swan_anomaly.redact.redact_uri`` against SQLAlchemy's own parser.

A password holding ``/`` (or ``?``, ``#``) ended the user info early for ``urllib.parse.urlsplit``,
so ``postgresql://mlflow:pa/ss@db/mlflow`` came back whole, password included, while SQLAlchemy
(and so MLflow's tracking store) reads the password ``pa/ss`` from it.
"""

from __future__ import annotations

import pytest
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url

from swan_anomaly.redact import MASK, has_credentials, redact_uri

DATABASE_URIS = [
    "postgresql://mlflow:s3cret@db:5432/mlflow",
    "postgresql://mlflow:pa/ss@db:5432/mlflow",
    "postgresql+psycopg2://mlflow:a/b/c@db/mlflow?sslmode=require",
    "mysql://root:pa?ss@db/mlflow",
    "mysql+pymysql://root:pa#ss@db:3306/mlflow",
    "postgresql://mlflow:/leading-slash@db/mlflow",
    "postgresql://mlflow:ends-with/@db/mlflow",
    "postgresql://user@corp.com:pa@db/x",  # SQLAlchemy's user name may hold "@"
    "postgresql://u:pw1@ss2@db/x",  # SQLAlchemy: password "pw1"; urlsplit: password "pw1@ss2"; both are masked
    "db2+ibm_db://u:secret@h/db",
]


@pytest.mark.parametrize("uri", DATABASE_URIS)
def test_the_password_sqlalchemy_reads_is_never_shown(uri):
    url = make_url(uri)
    assert url.password, "the case must carry a password for SQLAlchemy"
    shown = redact_uri(uri)
    assert url.password not in shown, shown
    assert urlsplit(uri).password is None or urlsplit(uri).password not in shown, shown  # nor urlsplit's reading
    assert has_credentials(uri)
    # the rest stays readable: user, host and database as SQLAlchemy reads them from the masked form
    if "@" not in url.host:  # the one case SQLAlchemy reads with an "@" in the host loses that part to the mask
        masked = make_url(shown)
        assert (masked.username, masked.host, masked.port, masked.database) == (url.username, url.host, url.port, url.database)
        assert masked.password == MASK


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("https://dapi0123@adb-1.azuredatabricks.net/", "https://***@adb-1.azuredatabricks.net/"),
        ("https://user:p@ss@mlflow.example.com/api", "https://user:***@mlflow.example.com/api"),  # as urllib3 reads it
        ("https://tok@en@host/x", "https://***@host/x"),
        ("https://user@example.com:pa@host", "https://user@example.com:***@host"),
        ("https://acct.blob.core.windows.net/c?sv=2024&sig=abc/def", "https://acct.blob.core.windows.net/c?sv=2024&sig=***"),
        # secrets in query parameters of other names passed unmasked, and has_credentials let such a URI through
        ("https://api.example.com/x?api_key=s3cret&v=2", "https://api.example.com/x?api_key=***&v=2"),
        ("https://login.example.com/t?client_secret=s3cret", "https://login.example.com/t?client_secret=***"),
        ("postgresql://db/mlflow?sslmode=require&sslpassword=s3cret", "postgresql://db/mlflow?sslmode=require&sslpassword=***"),
        (
            "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7BODBC%7D%3BSERVER%3Ddb%3BUID%3Dsa%3BPWD%3Ds3cret",
            "mssql+pyodbc:///?odbc_connect=***",  # a whole ODBC connection string, its password in it
        ),
        ("MSSQL+pyodbc:///?odbc_connect=PWD%3Dx", "MSSQL+pyodbc:///?odbc_connect=***"),  # the empty authority kept, in any case
        ("file:///tmp/x?token=1", "file:///tmp/x?token=***"),
    ],
)
def test_tokens_in_http_uris_are_masked(uri, shown):
    assert redact_uri(uri) == shown and has_credentials(uri)


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:////home/me/.swan/mlflow/mlflow.db",
        "http://127.0.0.1:5000",
        "https://mlflow.example.com/path?email=ops@example.com",
        "postgresql://db/mlflow?sslmode=require&keepalives=1&sslkey=/etc/ssl/client.key",  # sslkey is a path, named by its word
        "https://mlflow.example.com:8443/api?email=ops@example.com",  # a port and an "@" after it: no user info
        "http://mlflow:5000/path@x",
        "http://[::1]:5000/a@b",
        "databricks-uc",
        "file:///tmp/mlruns",
        "",
        None,
    ],
)
def test_uris_without_secrets_come_back_unchanged(uri):
    assert redact_uri(uri) == uri and not has_credentials(uri)
