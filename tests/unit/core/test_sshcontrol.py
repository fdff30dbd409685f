"""The settings file node control over SSH rewrites: only the keys failover manages change."""

from __future__ import annotations

from continuity.failover.sshcontrol import rewrite_settings


def test_managed_keys_are_replaced_or_removed_and_every_other_line_kept() -> None:
    text = ("port = 5433\n# a comment\nprimary_conninfo = 'host=old'\nPRIMARY_SLOT_NAME='x'\n"
            "synchronous_standby_names = 'sync1'\ncluster_name = 'dr'\n")
    rewritten = rewrite_settings(text, {"primary_conninfo": "host=new user=replicator passfile=/p",
                                        "primary_slot_name": "dr", "synchronous_standby_names": None})
    assert rewritten.splitlines() == [
        "port = 5433", "# a comment", "cluster_name = 'dr'",
        "primary_conninfo = 'host=new user=replicator passfile=/p'", "primary_slot_name = 'dr'"]


def test_quotes_in_values_are_doubled_and_a_missing_file_starts_empty() -> None:
    assert rewrite_settings("", {"restore_command": "fetch '%f' %p"}) == "restore_command = 'fetch ''%f'' %p'\n"
    # A key that is a prefix of another is not mistaken for it.
    assert rewrite_settings("primary_conninfo_extra = 1\n", {"primary_conninfo": None}) == "primary_conninfo_extra = 1\n"
