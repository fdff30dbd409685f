"""The table of contents a sample restore keeps: the chosen tables with their data, keys and column
defaults, every sequence, and never an entry that names a table left out (pg_restore would fail on it)."""

from __future__ import annotations

from continuity.restore.engine import _toc_for

LISTING = """\
;
; Archive created at 2026-11-27 13:31:58 UTC
;
215; 1259 16385 TABLE public videos app
216; 1259 16390 SEQUENCE public videos_id_seq app
3395; 0 0 SEQUENCE OWNED BY public videos_id_seq app
217; 1259 16400 TABLE public detections app
218; 1259 16405 SEQUENCE public detections_id_seq app
3396; 0 0 SEQUENCE OWNED BY public detections_id_seq app
3240; 2604 16410 DEFAULT public videos id app
3241; 2604 16411 DEFAULT public detections id app
3380; 0 16385 TABLE DATA public videos app
3381; 0 16400 TABLE DATA public detections app
3400; 0 0 SEQUENCE SET public videos_id_seq app
3401; 0 0 SEQUENCE SET public detections_id_seq app
3250; 2606 16420 CONSTRAINT public videos videos_pkey app
3251; 2606 16421 FK CONSTRAINT public detections detections_video_id_fkey app
"""


def test_a_sample_keeps_its_tables_and_sequences_and_drops_what_names_other_tables() -> None:
    kept = _toc_for(LISTING, {"videos"}).splitlines()
    ids = [line.split(";")[0] for line in kept]
    assert ids == ["215", "216", "218", "3240", "3380", "3400", "3401", "3250"]
    assert not any("OWNED BY" in line for line in kept), "a sequence's owner may be a table outside the sample"
    assert not any("detections " in line.split(";", 1)[1] for line in kept if "SEQUENCE" not in line)
