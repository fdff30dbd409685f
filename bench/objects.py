"""Object replication benchmark (`make bench`): Continuity against `rclone sync --checksum`, side by side.

About 2,000 objects (1 KiB to 20 MiB, about 1 GiB) in a versioned source bucket on moto's S3
server over HTTP; each tool copies them to a bucket of its own on the same endpoint, then 1% of
them are overwritten and each copies again (the incremental run). Every measured copy runs in a
child process, so its peak RSS is its own (wait4's ru_maxrss). Continuity is measured streaming
into an object-locked replica (as the sandbox's policy has it), verifying every object by SHA-256,
and with server-side copies into an unlocked replica; rclone streams between two remotes and
compares MD5s (--checksum). The like-for-like row is Continuity streaming into an unlocked replica,
as rclone's is (server-side copying turned off for it). Numbers are medians of one run each here: this is a 2-core machine.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import yaml

from continuity.postgres.cluster import free_port, wait_for_port
from continuity.policy.project import default_policy_path
from table import print_table  # bench/table.py: the script's own directory is on sys.path

ACCESS, SECRET = "bench", "bench-secret"
WORKERS = int(os.environ.get("CONTINUITY_BENCH_WORKERS", "0"))  # 0: the policy's objects.copy_workers
SMALL, LARGE = (1024, 256 * 1024), (8 * 2**20, 20 * 2**20)


def sizes(count: int, rng: random.Random) -> list[int]:
    """Mostly small objects, one in fifty between 8 and 20 MiB: about 1 GiB for 2,000."""
    return [rng.randint(*LARGE) if i % 50 == 0 else rng.randint(*SMALL) for i in range(count)]


def client(endpoint: str, region: str = "us-east-1"):
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, aws_access_key_id=ACCESS,
                        aws_secret_access_key=SECRET)


def content(key: str, size: int) -> bytes:
    seed = hashlib.sha256(key.encode()).digest()
    return (seed * (size // 32 + 1))[:size]


def policy_file(workdir: Path, endpoint: str, *, replica: str, locked: bool) -> Path:
    data = yaml.safe_load(default_policy_path().read_text())
    video = data["objects"]["categories"]["video_content"]
    video["source"].update(bucket="bench-src", prefix="videos/")
    video["replicas"][0].update(bucket=replica, prefix="videos/")
    video["deletes"]["max_per_run"] = 10_000
    if not locked:
        video.pop("object_lock")
    del data["objects"]["categories"]["user_uploads"]
    if WORKERS:
        data["objects"]["copy_workers"] = WORKERS
    for location in data["storage"]["locations"]:
        location["prefix"] = f"bench-state-{replica}/"
    path = workdir / f"policy-{replica}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def child_replicate(policy_path: str, endpoint: str, *, streamed: bool = False) -> dict:
    """One dr_object_replication run of video_content, as the DAG does it, without Airflow; `streamed`
    turns server-side copying off (the replica's endpoint is the source's here)."""
    from continuity.objects.replication import replicator_for
    from continuity.policy.loading import load_policy
    from continuity.storage.locations import locations_from_policy

    policy = load_policy(policy_path)
    locations = locations_from_policy(policy, lambda loc: client(endpoint, loc.region))
    state = {n: loc for n, loc in locations.items() if n in ("primary", "dr")}
    replicator = replicator_for(policy, "video_content", state=state, report=lambda _m: None,
                                client_for=lambda _conn, region: client(endpoint, region))
    if streamed:
        replicator.server_side = False
    started = time.perf_counter()
    record = replicator.run(run_id=f"bench-{time.time_ns()}")
    return {"seconds": time.perf_counter() - started, "copied": record.copied, "bytes": record.copied_bytes,
            "failed": len(record.failed), "methods": record.methods, "timings": record.timings}


def _high_water_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return None
    return next((int(line.split()[1]) for line in status if line.startswith("VmHWM:")), None)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/<pid>/stat utime, stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str, float]:
    """Run a child; its wall time, its own peak RSS (KiB, VmHWM read while it runs: wait4's ru_maxrss
    would count this process's size at the fork), its stdout and its CPU seconds."""
    # rclone 1.60 refuses to start with AWS_CA_BUNDLE set (its HTTP transport cannot take one); the
    # endpoint here is plain HTTP, so neither tool needs it.
    environ = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    started = time.perf_counter()
    children = os.times()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(argv, stdout=out, stderr=err, env={**environ, **(env or {})})
        peak = 0
        while process.poll() is None:
            peak = max(peak, _high_water_kib(process.pid) or 0)
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
        after = os.times()
        cpu = after.children_user + after.children_system - children.children_user - children.children_system
        if process.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{argv[0]} failed ({process.returncode}): {err.read().decode()[-2000:]}")
        out.seek(0)
        return elapsed, peak, out.read().decode(), cpu


def main(count: int) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="continuity-bench-objects-"))
    port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    rows: list[tuple[str, str]] = []
    try:
        wait_for_port(port, what="moto")
        east, west = client(endpoint), client(endpoint, "us-west-2")
        east.create_bucket(Bucket="bench-src")
        east.put_bucket_versioning(Bucket="bench-src", VersioningConfiguration={"Status": "Enabled"})
        for bucket, locked in (("bench-locked", True), ("bench-streamed", False), ("bench-serverside", False),
                               ("bench-rclone", False)):
            west.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=locked,
                               CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
            west.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
            if locked:
                west.put_object_lock_configuration(Bucket=bucket, ObjectLockConfiguration={
                    "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 7}}})
        for name, region in (("continuity-backups-us-east-1", "us-east-1"), ("continuity-backups-us-west-2", "us-west-2"),
                             ("continuity-archive-eu-west-1", "eu-west-1")):
            kwargs = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            client(endpoint, region).create_bucket(Bucket=name, **kwargs)
        rng = random.Random(7)
        keys = [f"videos/{i:05d}.mp4" for i in range(count)]
        object_sizes = dict(zip(keys, sizes(count, rng)))
        for key, size in object_sizes.items():
            east.upload_fileobj(io.BytesIO(content(key, size)), "bench-src", key)
        total = sum(object_sizes.values())
        rows.append(("source", f"{count:,} objects, {total / 2**20:,.0f} MiB (largest {max(object_sizes.values()) / 2**20:.1f} MiB)"))
        listing = {}
        for operation in ("list_object_versions", "list_objects_v2"):
            started = time.perf_counter()
            for _page in east.get_paginator(operation).paginate(Bucket="bench-src", Prefix="videos/"):
                pass
            listing[operation] = time.perf_counter() - started
        # moto's ListObjectVersions deep-copies every version of the bucket, contents included, for each
        # page (moto/s3/models.py, list_object_versions): its time grows with the bytes stored, S3's does not.
        rows.append(("endpoint listing", f"ListObjectVersions {listing['list_object_versions']:.2f} s, "
                                         f"ListObjectsV2 {listing['list_objects_v2']:.2f} s (the whole prefix, paginated)"))

        env = {"RCLONE_CONFIG_SRC_TYPE": "s3", "RCLONE_CONFIG_SRC_PROVIDER": "Other",
               "RCLONE_CONFIG_SRC_ENDPOINT": endpoint, "RCLONE_CONFIG_SRC_ACCESS_KEY_ID": ACCESS,
               "RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY": SECRET, "RCLONE_CONFIG_SRC_REGION": "us-east-1",
               "RCLONE_CONFIG_DST_TYPE": "s3", "RCLONE_CONFIG_DST_PROVIDER": "Other",
               "RCLONE_CONFIG_DST_ENDPOINT": endpoint, "RCLONE_CONFIG_DST_ACCESS_KEY_ID": ACCESS,
               "RCLONE_CONFIG_DST_SECRET_ACCESS_KEY": SECRET, "RCLONE_CONFIG_DST_REGION": "us-west-2"}
        rclone = ["rclone", "sync", "--checksum", "src:bench-src/videos/", "dst:bench-rclone/videos/"]
        me = [sys.executable, __file__, "--child"]
        locked = policy_file(workdir, endpoint, replica="bench-locked", locked=True)
        streamed = policy_file(workdir, endpoint, replica="bench-streamed", locked=False)
        serverside = policy_file(workdir, endpoint, replica="bench-serverside", locked=False)

        def line(label: str, seconds: float, rss_kib: int, copied: int, copied_bytes: int, cpu: float,
                 endpoint_cpu: float) -> tuple[str, str]:
            return (label, f"{seconds:7.2f} s  {copied / seconds:8.1f} objects/s  {copied_bytes / 2**20 / seconds:7.1f} MiB/s"
                           f"  peak RSS {rss_kib / 1024:5.0f} MiB  CPU {cpu:5.1f} s + endpoint {endpoint_cpu:5.1f} s"
                           f"  ({copied:,} objects)")

        results: dict[tuple[str, str], float] = {}
        listed: dict[tuple[str, str], float] = {}
        for phase in ("full", "incremental"):
            if phase == "incremental":
                changed = rng.sample(keys, max(1, count // 100))
                for key in changed:
                    east.put_object(Bucket="bench-src", Key=key, Body=content(key + "-v2", object_sizes[key]))
                changed_bytes = sum(object_sizes[k] for k in changed)
                rows.append(("changed", f"{len(changed)} objects overwritten ({changed_bytes / 2**20:.1f} MiB)"))
            for label, policy, how in (("continuity streamed, locked replica", locked, "auto"),
                                       ("continuity streamed, unlocked replica", streamed, "streamed"),
                                       ("continuity server-side copy", serverside, "auto")):
                before = cpu_seconds(moto.pid)
                seconds, rss, out, cpu = measured([*me, str(policy), endpoint, how])
                endpoint_cpu = cpu_seconds(moto.pid) - before
                record = json.loads(out)
                assert record["failed"] == 0, record
                results[(phase, label)] = seconds
                listed[(phase, label)] = record["timings"].get("listing", 0.0)
                rows.append(line(f"{phase:11} {label}", seconds, rss, record["copied"], record["bytes"], cpu, endpoint_cpu))
                inside = record["seconds"]
                timings = record["timings"]
                overlapped = (f" (listing every version {timings['listing_while_copying']:.2f} s meanwhile)"
                              if "listing_while_copying" in timings else "")
                rows.append(("", f"of which: process start {seconds - inside:.2f} s, listing "
                                 f"{timings.get('listing', 0):.2f} s, copying {timings.get('copying', 0):.2f} s{overlapped}, "
                                 f"checkpoint/protection/heartbeat "
                                 f"{inside - timings.get('listing', 0) - timings.get('copying', 0):.2f} s"))
            before = cpu_seconds(moto.pid)
            seconds, rss, _, cpu = measured(rclone, env)
            endpoint_cpu = cpu_seconds(moto.pid) - before
            results[(phase, "rclone")] = seconds
            copied = count if phase == "full" else len(changed)
            copied_bytes = total if phase == "full" else changed_bytes
            rows.append(line(f"{phase:11} rclone sync --checksum", seconds, rss, copied, copied_bytes, cpu, endpoint_cpu))
        for label in ("continuity streamed, locked replica", "continuity streamed, unlocked replica",
                      "continuity server-side copy"):
            full, incremental = results[("full", label)], results[("incremental", label)]
            without = (incremental - listed[("incremental", label)]) / (full - listed[("full", label)])
            rows.append((f"ratio {label}",
                         f"full {full / results[('full', 'rclone')]:.2f}x rclone's time; incremental {incremental / full:.1%} "
                         f"of its full run ({without:.1%} without the endpoint's listing time, both measured above)"))
    finally:
        moto.terminate()
        try:
            moto.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a busy endpoint may not stop in time: the numbers still print
            moto.kill()
            moto.wait()
    print_table(rows)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child_replicate(sys.argv[2], sys.argv[3], streamed=sys.argv[4] == "streamed")))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=2000)
    sys.exit(main(parser.parse_args().objects))
