-- Two databases on one PostgreSQL: the service's sweeps and MLflow's tracking store.
CREATE DATABASE dab;
CREATE DATABASE mlflow;
