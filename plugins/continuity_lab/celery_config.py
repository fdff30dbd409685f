"""The lab's Celery configuration: Airflow's default, and the DAG files' imports loaded in each worker's main
process before its pool forks (why: continuity_lab/executor.py)."""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG
from celery.signals import worker_init

from continuity_lab.executor import preload_dag_imports

CELERY_CONFIG: dict[str, Any] = dict(DEFAULT_CELERY_CONFIG)


@worker_init.connect
def _preload_before_the_pool_forks(**_kwargs: Any) -> None:
    preload_dag_imports()
