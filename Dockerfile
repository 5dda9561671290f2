# The swan-anomaly image: Airflow 3.3.2 with this project's pinned environment, the same one
# `make venv` builds (torch 2.13.0 CPU first, then requirements.txt, then the project without deps).
# docker-compose.yaml runs every Airflow component, the MLflow server and the model server on it.
#
#   docker compose build            (or: docker build -t swan-anomaly-airflow:3.3.2 .)
ARG AIRFLOW_BASE_IMAGE=apache/airflow:3.3.2-python3.11
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
COPY --chown=airflow:0 requirements.txt /opt/swan-anomaly/requirements.txt
RUN pip install --no-cache-dir -r /opt/swan-anomaly/requirements.txt
# deploy_code builds the project wheel with --no-build-isolation (plugins/swan_airflow/code_deploy.py),
# so the build backend of pyproject.toml must be installed.
RUN pip install --no-cache-dir "setuptools==84.2.1" "wheel==0.48.0"

# The project itself, without dependencies (all pinned above), from include/.
COPY --chown=airflow:0 pyproject.toml README.md /opt/swan-anomaly/
COPY --chown=airflow:0 include /opt/swan-anomaly/include
RUN pip install --no-cache-dir --no-deps /opt/swan-anomaly \
    && rm -rf /opt/swan-anomaly/build /opt/swan-anomaly/include/*.egg-info
COPY --chown=airflow:0 jobs /opt/swan-anomaly/jobs
COPY --chown=airflow:0 plugins /opt/swan-anomaly/plugins
COPY --chown=airflow:0 dags /opt/swan-anomaly/dags

# Fail the build, not the first DAG run, if the stack's pieces are missing: psycopg2 (Airflow's and
# MLflow's postgres driver) comes from the base image, requirements.txt does not pin it.
RUN python -c "import psycopg2, pyspark, mlflow, airflow, swan_anomaly" \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
    && java -version
