"""Serving: the pyfunc model (``pyfunc``), the local endpoint server (``server``), the
process manager of the embedded default (``local``) and the REST client used for both the
local endpoint and Databricks Model Serving (``client``).

Example:
    >>> from swan_anomaly.serving.client import EndpointClient   # doctest: +SKIP
"""
