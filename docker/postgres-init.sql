-- One Postgres, one database per service.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
CREATE DATABASE flywheel;
