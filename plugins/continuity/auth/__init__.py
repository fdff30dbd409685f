"""The Airflow auth manager of a Continuity deployment and the writing of its roles and users."""
