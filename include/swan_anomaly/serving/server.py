"""The local model server: the embedded default's stand-in for Databricks Model Serving.

Same REST contract as a Databricks serving endpoint, so the same clients (databricks-sdk's
``serving_endpoints`` for the config, plain HTTP for invocations) talk to both:

* ``POST /serving-endpoints/{name}/invocations``: MLflow scoring protocol
  (``dataframe_split``/``dataframe_records``/``inputs``), answered by MLflow's own
  scoring code as ``{"predictions": [...]}``.
* ``GET /api/2.0/serving-endpoints/{name}``: endpoint state and the served entity.
* ``POST /api/2.0/serving-endpoints``: create the endpoint with its first served entity.
* ``PUT /api/2.0/serving-endpoints/{name}/config``: serve another registered model version.
  The new version is loaded in the background and swapped in atomically once ready; the old
  one answers meanwhile, and stays if loading fails (``config_update: UPDATE_FAILED``).
* ``DELETE /api/2.0/serving-endpoints/{name}``: delete the endpoint; it serves nothing until
  it is created again.

Run it: ``python -m swan_anomaly.serving.server --port 5055 --name swan-anomaly``.

Example:
    >>> app = create_app("swan-anomaly", tracking_uri="sqlite:///.swan/mlflow/mlflow.db")  # doctest: +SKIP
"""

# No ``from __future__ import annotations`` here: FastAPI resolves the route annotations
# (``Request``) at definition time, and they are local to ``create_app``.
import argparse
import asyncio
import logging
import threading
import time

log = logging.getLogger(__name__)


class EndpointState:
    """The served model and the endpoint's Databricks-shaped state."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.created = False
        self.model = None
        self.input_schema = None
        self.served: dict | None = None
        self.config_update = "NOT_UPDATING"
        self.message = ""
        self.lock = threading.Lock()

    def describe(self) -> dict:
        served = [self.served] if self.served else []
        return {
            "name": self.name,
            "state": {"ready": "READY" if self.model is not None else "NOT_READY", "config_update": self.config_update},
            "config": {"served_entities": served},
            "message": self.message,
        }

    def start_update(self, body: dict):
        """Validate a config body and start loading its entity; returns an error response or None."""
        from fastapi.responses import JSONResponse

        entities = body.get("served_entities") or []
        if len(entities) != 1 or not {"entity_name", "entity_version"} <= set(entities[0]):
            return JSONResponse(
                {"error_code": "INVALID_PARAMETER_VALUE", "message": "need exactly one served entity with entity_name and entity_version"},
                400,
            )
        with self.lock:
            if self.config_update == "IN_PROGRESS":
                return JSONResponse({"error_code": "RESOURCE_CONFLICT", "message": f"Endpoint '{self.name}' is already updating"}, 409)
            self.config_update = "IN_PROGRESS"
        entity = {k: v for k, v in entities[0].items() if k != "name"}
        entity["entity_version"] = str(entity["entity_version"])
        threading.Thread(target=self.load, args=(entity,), daemon=True).start()
        return None

    def load(self, entity: dict) -> None:
        import mlflow.pyfunc

        uri = f"models:/{entity['entity_name']}/{entity['entity_version']}"
        started = time.perf_counter()
        try:
            model = mlflow.pyfunc.load_model(uri)
        except Exception as exc:  # noqa: BLE001 - reported in the endpoint state
            with self.lock:
                self.config_update = "UPDATE_FAILED"
                self.message = f"loading {uri} failed: {type(exc).__name__}: {exc}"
            log.error(self.message)
            return
        with self.lock:
            self.model, self.input_schema = model, model.metadata.get_input_schema()
            self.served = {"name": f"{entity['entity_name']}-{entity['entity_version']}", **entity}
            self.config_update = "NOT_UPDATING"
            self.message = f"serving {uri} (loaded in {time.perf_counter() - started:.1f}s)"
        log.info(self.message)


def create_app(name: str, *, tracking_uri: str | None = None, registry_uri: str | None = None):
    """The FastAPI app of a local endpoint called ``name``."""
    import mlflow
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse, Response
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    if registry_uri or tracking_uri:
        mlflow.set_registry_uri(registry_uri or tracking_uri)
    state = EndpointState(name)
    app = FastAPI(title=f"swan-anomaly local endpoint {name}")
    app.state.endpoint = state

    @app.exception_handler(HTTPException)
    async def databricks_shaped_error(request: Request, exc: HTTPException):
        # Databricks answers errors as {"error_code": ..., "message": ...}; databricks-sdk maps them.
        body = exc.detail if isinstance(exc.detail, dict) else {"error_code": "BAD_REQUEST", "message": str(exc.detail)}
        return JSONResponse(body, exc.status_code)

    def check(endpoint: str) -> None:
        if endpoint != name:
            raise HTTPException(
                404,
                detail={
                    "error_code": "RESOURCE_DOES_NOT_EXIST",
                    "message": f"Endpoint '{endpoint}' does not exist; this server hosts '{name}'",
                },
            )

    @app.get("/health")
    async def health():
        return {"status": "ok", "registry_uri": mlflow.get_registry_uri(), **state.describe()["state"]}

    @app.get("/api/2.0/serving-endpoints/{endpoint}")
    async def get_endpoint(endpoint: str):
        check(endpoint)
        if not state.created:
            return JSONResponse(
                {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Endpoint with name '{endpoint}' does not exist."}, 404
            )
        return state.describe()

    @app.post("/api/2.0/serving-endpoints")
    async def create_endpoint(request: Request):
        body = await request.json()
        check(body.get("name", ""))
        if state.created:
            return JSONResponse({"error_code": "RESOURCE_ALREADY_EXISTS", "message": f"Endpoint with name '{name}' already exists"}, 400)
        error = state.start_update(body.get("config") or {})
        if error is not None:
            return error
        state.created = True
        return state.describe()

    @app.put("/api/2.0/serving-endpoints/{endpoint}/config")
    async def update_config(endpoint: str, request: Request):
        check(endpoint)
        return state.start_update(await request.json()) or state.describe()

    @app.delete("/api/2.0/serving-endpoints/{endpoint}")
    async def delete_endpoint(endpoint: str):
        check(endpoint)
        with state.lock:
            if not state.created:
                return JSONResponse(
                    {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Endpoint with name '{endpoint}' does not exist."}, 404
                )
            state.created, state.model, state.input_schema, state.served = False, None, None, None
            state.config_update, state.message = "NOT_UPDATING", "deleted"
        log.warning("endpoint %s deleted: it serves nothing now", endpoint)
        return {}

    @app.post("/serving-endpoints/{endpoint}/invocations")
    async def invocations(endpoint: str, request: Request):
        check(endpoint)
        with state.lock:
            model, schema = state.model, state.input_schema
        if model is None:
            return JSONResponse({"error_code": "TEMPORARILY_UNAVAILABLE", "message": f"Endpoint '{name}' serves no model yet"}, 503)
        data = await request.body()
        try:
            result = await asyncio.to_thread(
                scoring_server.invocations, data, request.headers.get("content-type", "application/json"), model, schema
            )
        except MlflowException as exc:
            return Response(exc.serialize_as_json(), status_code=exc.get_http_status_code(), media_type="application/json")
        return Response(result.response, status_code=result.status, media_type=result.mimetype)

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Local model server with the Databricks Model Serving REST contract")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--name", default="swan-anomaly", help="endpoint name")
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    parser.add_argument("--registry-uri", default=None, help="MLflow registry URI (default: the tracking URI)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(args.name, tracking_uri=args.tracking_uri, registry_uri=args.registry_uri)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
