-- MLflow's backend store, beside Airflow's metadata database in the same postgres.
-- Mounted into /docker-entrypoint-initdb.d by docker-compose.yaml: postgres runs it once, as the
-- superuser `airflow`, when the postgres-db volume is first initialised (an existing volume keeps
-- its databases; `docker compose down -v` starts over). The login is a well-known local default
-- and must match the mlflow service's --backend-store-uri.
CREATE USER mlflow WITH PASSWORD 'mlflow';
CREATE DATABASE mlflow OWNER mlflow;
