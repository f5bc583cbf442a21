"""Reliability catalogue, data side: real BraTS 2020 folders and the ROI cache (issue 11).

One test per failure found by trying bad inputs, faults and the BraTS 2020 release layout,
named after the failure. Each asserts the exact outcome: a one-line error naming the file or
option and the problem (exit code 1 and no traceback on the CLI) with the files on disk
unchanged, or the documented recovery. The table in docs/reliability.md lists them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tumoraug.checkpoint import LOCK_NAME
from tumoraug.cli import app
from tumoraug.data import (
    LayoutWarning,
    ROIDataset,
    discover_subjects,
    preprocess,
    read_manifest,
    write_phantom_dataset,
)
from tumoraug.data.cache import MANIFEST_NAME
from tumoraug.data.phantom import MISNAMED_SEG, NAME_MAPPING_COLUMNS
from tumoraug.errors import ConfigError, DataError

IDS = [f"BraTS20_Training_{n:03d}" for n in range(1, 5)]
"""The subjects of the `release` fixture: 2 HGG, then 2 LGG (the last one's seg misnamed)."""


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A tiny BraTS 2020 release as the phantom generator writes it (read-only)."""
    root = tmp_path_factory.mktemp("brats2020") / "MICCAI_BraTS2020_TrainingData"
    return write_phantom_dataset(root, 2, seed=0, shape=(32, 32, 24), layout="brats2020")


@pytest.fixture
def source(release, tmp_path) -> Path:
    """A private copy of `release` that a test may change."""
    return shutil.copytree(release, tmp_path / "source")


@pytest.fixture
def cache(release, tmp_path) -> Path:
    """A ROI cache of `release` (size 16) that a test may change."""
    preprocess(release, tmp_path / "rois", size=16)
    return tmp_path / "rois"


def snapshot(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (hidden ones included), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def cli(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str) -> str:
    """Exit code 1, no traceback, exactly one ``error:`` line holding every fragment."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]
    for fragment in fragments:
        assert fragment in line, (fragment, line)
    return line


# ---- real BraTS 2020 folders ----------------------------------------------------------------


def test_phantom_writes_the_brats2020_release_layout(release):
    assert sorted(p.name for p in release.iterdir()) == [
        *IDS,
        "name_mapping.csv",
        "survival_info.csv",
    ]
    raw = (release / "name_mapping.csv").read_bytes()
    lines = raw.decode().split("\r\n")
    assert lines[0] == ",".join(NAME_MAPPING_COLUMNS) and lines[-1] == ""
    assert b"\n" not in raw.replace(b"\r\n", b"")  # CRLF line ends only
    assert [line.split(",")[1] for line in lines[1:-1]].count("NA") == 2  # repeated NA ids
    names = sorted(p.name for p in (release / IDS[-1]).iterdir())
    assert MISNAMED_SEG in names and f"{IDS[-1]}_seg.nii" not in names
    assert f"{IDS[0]}_flair.nii" in {p.name for p in (release / IDS[0]).iterdir()}


def test_unknown_phantom_layout_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"layout: expected one of brats2019, brats2020"):
        write_phantom_dataset(tmp_path / "x", 1, shape=(16, 16, 16), layout="brats2021")
    assert not (tmp_path / "x").exists()


def test_name_mapping_with_na_in_older_id_columns_picks_the_matching_column(release):
    records = discover_subjects(release)
    assert [(r.subject_id, r.grade) for r in records] == list(
        zip(IDS, ["HGG", "HGG", "LGG", "LGG"], strict=True)
    )
    assert records[0].directory == release / IDS[0]


def test_misnamed_segmentation_is_used_with_a_warning_naming_it(release):
    record = discover_subjects(release)[-1]
    with pytest.warns(LayoutWarning, match=MISNAMED_SEG.replace(".", r"\.")):
        assert record.find("seg") == release / IDS[-1] / MISNAMED_SEG


def test_two_unrecognised_niftis_are_not_guessed_as_the_segmentation(source):
    folder = source / IDS[-1]
    shutil.copy(folder / MISNAMED_SEG, folder / "other_Segm.nii")
    record = discover_subjects(source)[-1]
    with pytest.raises(DataError, match=r"missing seg file.*found W39_1998\.09\.19_Segm\.nii"):
        record.find("seg")


def test_brats2020_release_layout_preprocesses_every_subject(release, tmp_path):
    result = cli("preprocess", release, tmp_path / "rois", "--size", "16")
    assert result.exit_code == 0, result.output
    assert "4 ROIs in" in result.stdout and "0 failed" in result.stdout
    assert f"warning: {IDS[-1]}" in result.output and MISNAMED_SEG in result.output
    manifest = read_manifest(tmp_path / "rois")
    assert [e["subject"] for e in manifest["subjects"]] == IDS and manifest["failed"] == []
    last = manifest["subjects"][-1]
    assert last["sources"]["seg"].endswith(MISNAMED_SEG)
    assert any(MISNAMED_SEG in w for w in last["warnings"])
    assert ROIDataset(tmp_path / "rois").labels == [1, 1, 0, 0]


def test_subject_folder_absent_from_the_csv_is_reported_not_skipped(source, tmp_path):
    extra = source / "BraTS20_Training_999"
    shutil.copytree(source / IDS[0], extra)
    result = cli("preprocess", source, tmp_path / "rois", "--size", "16")
    assert result.exit_code == 0, result.output
    assert "4 ROIs in" in result.stdout and "1 failed" in result.stdout
    assert "failed: BraTS20_Training_999" in result.output
    (failure,) = read_manifest(tmp_path / "rois")["failed"]
    assert failure["subject"] == "BraTS20_Training_999"
    assert f"{extra}: subject folder not listed in" in failure["error"]
    assert "name_mapping.csv" in failure["error"]
    with pytest.raises(DataError, match="subject folder not listed in"):
        discover_subjects(source)


# ---- data loss: what preprocess may write into -----------------------------------------------


def test_unrelated_manifest_in_the_output_folder_is_refused(release, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / MANIFEST_NAME).write_text(json.dumps({"experiment": "mine"}))
    (out / "notes.txt").write_text("keep me")
    before = snapshot(out)
    line = assert_one_line_error(
        cli("preprocess", release, out, "--size", "16"),
        f"{out / MANIFEST_NAME}: not a tumoraug ROI cache manifest",
        "choose another folder",
    )
    assert "--overwrite" not in line  # no flag makes tumoraug write there
    assert snapshot(out) == before
    with pytest.raises(DataError, match="not a tumoraug ROI cache manifest"):
        preprocess(release, out, size=16, overwrite=True)
    assert snapshot(out) == before


def test_non_empty_folder_that_is_not_a_cache_is_refused(release, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    (out / "scores.csv").write_text("a,b\n1,2\n")
    before = snapshot(out)
    assert_one_line_error(
        cli("preprocess", release, out, "--size", "16"),
        f"{out}: the folder holds files (scores.csv) but is not a tumoraug ROI cache",
    )
    assert snapshot(out) == before


def test_empty_output_folder_is_accepted(release, tmp_path):
    out = tmp_path / "rois"
    out.mkdir()
    (out / ".gitkeep").write_text("")
    assert len(preprocess(release, out, size=16).processed) == 4
    assert (out / ".gitkeep").is_file() and not (out / LOCK_NAME).exists()


def test_another_source_into_an_existing_cache_is_refused_without_overwrite(cache, phantom_dir):
    before = snapshot(cache)
    assert_one_line_error(
        cli("preprocess", phantom_dir, cache, "--size", "16"),
        f"{cache}: this ROI cache was built from {read_manifest(cache)['source']}",
        f"not {phantom_dir.resolve()}",
        "--overwrite",
    )
    assert snapshot(cache) == before


def test_overwrite_replaces_the_cache_of_another_source(cache, phantom_dir):
    result = cli("preprocess", phantom_dir, cache, "--size", "16", "--overwrite")
    assert result.exit_code == 0, result.output
    assert "6 processed" in result.stdout
    manifest = read_manifest(cache)
    assert manifest["source"] == str(phantom_dir.resolve())
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [MANIFEST_NAME] + [e["file"] for e in manifest["subjects"]]
    )  # the ROIs of the old source are gone, nothing else is left


def test_preprocess_into_an_existing_file_is_one_clear_error(release, tmp_path):
    target = tmp_path / "rois.txt"
    target.write_text("not a folder")
    assert_one_line_error(
        cli("preprocess", release, target, "--size", "16"), f"{target}: is a file, not a folder"
    )
    assert target.read_text() == "not a folder"


# ---- data loss: the skip check trusts only intact files --------------------------------------


def test_truncated_cache_file_is_redone_not_reported_unchanged(cache, release):
    path = cache / f"{IDS[1]}.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    result = cli("preprocess", release, cache, "--size", "16")
    assert result.exit_code == 0, result.output
    assert "1 processed, 3 unchanged" in result.stdout
    entry = read_manifest(cache)["subjects"][1]
    assert entry["bytes"] == path.stat().st_size
    assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ROIDataset(cache)[1]["image"].shape == (1, 16, 16, 16)


def test_cache_file_written_with_other_settings_is_redone(cache, release, tmp_path):
    preprocess(release, tmp_path / "rois8", size=8)
    name = f"{IDS[2]}.safetensors"
    shutil.copy(tmp_path / "rois8" / name, cache / name)  # what two mixed runs left behind
    report = preprocess(release, cache, size=16)
    assert report.processed == [IDS[2]] and report.skipped == [IDS[0], IDS[1], IDS[3]]
    dataset = ROIDataset(cache)
    assert [dataset[i]["image"].shape for i in range(4)] == [(1, 16, 16, 16)] * 4


def test_interrupted_run_resumes_into_its_own_folder(release, tmp_path, monkeypatch):
    import tumoraug.data.cache as cache_module

    calls = []
    real = cache_module.extract_roi

    def interrupt_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_module, "extract_roi", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        preprocess(release, tmp_path / "rois", size=16)
    monkeypatch.undo()
    assert not (tmp_path / "rois" / LOCK_NAME).exists()
    report = preprocess(release, tmp_path / "rois", size=16)
    assert report.skipped == [IDS[0]] and report.processed == IDS[1:]


def test_stale_temporaries_of_an_interrupted_run_are_removed(cache, release):
    stale = [cache / ".manifest.json.0123abcd.tmp", cache / f".{IDS[0]}.safetensors.deadbeef.tmp"]
    for path in stale:
        path.write_bytes(b"half written")
    (cache / ".notes").write_text("mine")
    preprocess(release, cache, size=16)
    assert not any(p.exists() for p in stale)
    assert (cache / ".notes").read_text() == "mine"


# ---- concurrent writers ----------------------------------------------------------------------

HOLD_LOCK = """
import sys
from tumoraug.checkpoint import folder_lock
with folder_lock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def lock_holder(cache):
    """Another process that holds the lock of `cache` until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(cache)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    yield holder
    if holder.poll() is None:
        holder.kill()
    holder.wait()
    holder.stdout.close()
    holder.stdin.close()


def test_second_concurrent_preprocess_is_refused_with_a_clear_error(cache, release, lock_holder):
    before = snapshot(cache)
    assert_one_line_error(
        cli("preprocess", release, cache, "--size", "8"),
        f"{cache / LOCK_NAME}: another tumoraug run (pid {lock_holder.pid} on ",
        f"delete {LOCK_NAME} if it no longer runs",
    )
    assert snapshot(cache) == before
    lock_holder.stdin.close()  # the first run ends: the folder is free again
    lock_holder.wait()
    assert not (cache / LOCK_NAME).exists()
    assert len(preprocess(release, cache, size=8).processed) == 4


def test_stale_lock_of_a_killed_run_does_not_block(cache, release, lock_holder):
    lock_holder.kill()  # kill -9: the lock file stays behind
    lock_holder.wait()
    assert json.loads((cache / LOCK_NAME).read_text())["pid"] == lock_holder.pid
    report = preprocess(release, cache, size=16)
    assert len(report.skipped) == 4
    assert not (cache / LOCK_NAME).exists()


def test_lock_of_another_host_is_not_taken_over(cache, release):
    lock = {"pid": 1, "host": "elsewhere.example", "started": "2024-01-01T00:00:00+0000"}
    (cache / LOCK_NAME).write_text(json.dumps(lock))
    before = snapshot(cache)
    with pytest.raises(DataError, match=r"pid 1 on elsewhere\.example since 2024-01-01"):
        preprocess(release, cache, size=16)
    assert snapshot(cache) == before
