# The swan-anomaly image: the slim Airflow 3.3.2 image (core Airflow, no providers, no database drivers) with
# this project's pinned runtime environment, the one `make venv` builds less the test tools (torch 2.13.0 CPU
# first, then requirements.txt and the postgres drivers, then the project without deps), checked by `pip check`.
# docker-compose.yaml runs every Airflow component, the MLflow server and the model server on it, all through the
# image's own entrypoint (no ENTRYPOINT here).
#
#   docker compose build            (or: docker build -t swan-anomaly-airflow:3.3.2 .)
ARG AIRFLOW_BASE_IMAGE=apache/airflow:slim-3.3.2-python3.11
FROM ${AIRFLOW_BASE_IMAGE}

# Java for local Spark (the ETL and augmentation jobs run pyspark on local[*]); JAVA_HOME through a
# link that does not depend on the CPU architecture (amd64 or arm64).
USER root
RUN apt-get update \
    && mkdir -p /usr/share/man/man1 \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless \
    && ln -sfn "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /opt/java \
    && apt-get autoremove -yqq --purge \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*
ENV JAVA_HOME=/opt/java

# The project root (the repository's layout; compose bind-mounts the checkout over it), SWAN_HOME and
# MLflow's artifact and auth-database folders, writable by any uid in group 0 as the Airflow image
# expects. Named volumes mounted on the last three start with this ownership.
RUN mkdir -p /opt/swan-anomaly /opt/swan /opt/mlflow/artifacts /opt/mlflow/auth \
    && chown -R airflow:0 /opt/swan-anomaly /opt/swan /opt/mlflow \
    && chmod -R g+rwX /opt/swan-anomaly /opt/swan /opt/mlflow
USER airflow

# torch first, from the CPU index, so that no dependency pulls a CUDA build; requirements.txt pins
# the same version, which the installed +cpu build satisfies.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"
# requirements.txt is the runtime lock (the test tools are in requirements-dev.txt, which the image never
# reads): the providers the DAGs use are in it; the postgres drivers the slim image lacks in
# docker/requirements-postgres.txt.
COPY --chown=airflow:0 requirements.txt /opt/swan-anomaly/requirements.txt
COPY --chown=airflow:0 docker/requirements-postgres.txt /opt/swan-anomaly/docker/requirements-postgres.txt
RUN pip install --no-cache-dir -r /opt/swan-anomaly/requirements.txt -r /opt/swan-anomaly/docker/requirements-postgres.txt
# deploy_code builds the project wheel with --no-build-isolation (plugins/swan_airflow/code_deploy.py),
# so the build backend of pyproject.toml must be installed.
RUN pip install --no-cache-dir "setuptools==84.2.1" "wheel==0.48.0"

# The project itself, without dependencies (all pinned above), from include/.
COPY --chown=airflow:0 pyproject.toml README.md /opt/swan-anomaly/
COPY --chown=airflow:0 include /opt/swan-anomaly/include
RUN pip install --no-cache-dir --no-deps /opt/swan-anomaly \
    && rm -rf /opt/swan-anomaly/build /opt/swan-anomaly/include/*.egg-info
# Every installed distribution's requirements met, the slim base's own included: a conflict fails the build.
RUN pip check
COPY --chown=airflow:0 jobs /opt/swan-anomaly/jobs
COPY --chown=airflow:0 plugins /opt/swan-anomaly/plugins
COPY --chown=airflow:0 dags /opt/swan-anomaly/dags

# Fail the build, not the first DAG run, if the stack's pieces are missing: the postgres drivers, the
# providers the DAGs import, no test runner, curl for the healthchecks of docker-compose.yaml.
RUN python -c "import psycopg2, asyncpg, pyspark, mlflow, airflow, swan_anomaly" \
    && python -c "import airflow.providers.databricks, airflow.providers.microsoft.azure, airflow.providers.standard" \
    && python -c "import importlib.util as u; assert u.find_spec('pytest') is None, 'pytest in the image'" \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
    && java -version \
    && curl --version
