"""RemoveScratchClustersOperator: the teardown that guarantees no scratch cluster outlives its run."""

from __future__ import annotations

from airflow.sdk import BaseOperator, Context

from continuity.restore.engine import remove_scratch_clusters, scratch_prefix


class RemoveScratchClustersOperator(BaseOperator):
    """Stop and delete every scratch cluster this DAG run created and did not remove itself (a worker
    killed mid-restore, a timeout). Used with `.as_teardown()`, so it runs whatever happened upstream
    and does not decide the run's state."""

    def execute(self, context: Context) -> list[str]:
        removed = [str(p) for p in remove_scratch_clusters(scratch_prefix(context["run_id"]))]
        for path in removed:
            self.log.warning("removed scratch cluster %s left behind by this run", path)
        if not removed:
            self.log.info("no scratch cluster left behind by this run")
        return removed
