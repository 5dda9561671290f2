"""Serving: the pyfunc model (``pyfunc``), the local endpoint server (``server``), the
process manager of the embedded default (``local``), the REST client used for both the
local endpoint and Databricks Model Serving (``client``), the endpoint configuration updates
through databricks-sdk (``deploy``) and the checks of a served version (``validation``).

Example:
    >>> from swan_anomaly.serving.client import EndpointClient   # doctest: +SKIP
"""
