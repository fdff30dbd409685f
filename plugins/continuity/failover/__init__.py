"""Failover: the steps on a replication group, node and service control, routers."""
