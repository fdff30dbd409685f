"""The application's objects: replication, ledger, point-in-time restore, inventory, consistency."""
