"""Issue 14, classes 1, 2 and 8 at unit level: names and links cannot lead out of a job, nothing of the
user's is deleted or overwritten, temporaries of an interrupted run are removed, one run per job.

Every attack runs against a job folder next to an ``outside/`` folder holding a user's file; each test
checks that ``outside/`` is byte-for-byte what it was and that no stage ran.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from backend.errors import MVP4DError
from backend.events import EventSink
from backend.fsutil import (OUTPUT_MARKER, atomic_dir, atomic_path, check_new_file, check_output_folder,
                            publish_dir, remove_inside, remove_partials)
from backend.joblock import LOCK_NAME, JobLock, read_holder
from backend.jobpaths import MAX_NAME_BYTES, check_name, check_tree, confine, name_problem, safe_name, split_rel
from backend.jobs import Stage, create_job, run_job, stage_done
from backend.protocol import Event, InputsSpec, JobSpec

BAD_NAMES = [
    "", ".", "..", "a/b", "../x", "/abs", "a\\b", "..\\x", "C:", "c:evil", "x:y", "<", ">", '"', "|", "?", "*",
    "a\x00b", "a\nb", "\t", "\x7f", "a\u202eb", "\u200b", "\ud800", "\ue000", ".hidden", ".key00.abcdefgh.part",
    "x.", "...", " x", "x ", "CON", "con", "nul.txt", "Aux.tar.gz", "COM1", "lpt9.log", "COM\u00b9", "CONIN$",
    "a" * (MAX_NAME_BYTES + 1), "\u00e9" * (MAX_NAME_BYTES // 2 + 1),
]
GOOD_NAMES = ["key00", "view 1", "Camera.001", "\u30ab\u30e1\u30e9", "a-b_c(1)+x,y@z", "a" * MAX_NAME_BYTES,
              "CONSOLE", "com10", "nulled.png"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_with_the_field(name):
    with pytest.raises(MVP4DError) as ei:
        check_name(name, "cameras.cameras[3].name")
    assert ei.value.code == "BAD_INPUT" and ei.value.message.startswith("cameras.cameras[3].name ")
    assert "\n" not in ei.value.message


@pytest.mark.parametrize("name", [None, 3, True, ["a"], {"a": 1}])
def test_non_string_names_are_refused(name):
    assert name_problem(name) == "must be a non-empty string"


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_ordinary_names_pass(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", BAD_NAMES + ["Cam/../../etc", "  ", "___", "con.txt"])
def test_safe_name_always_gives_an_accepted_name(name):
    assert name_problem(safe_name(name)) is None


@pytest.mark.parametrize("rel", ["../x.png", "inputs/../../x.png", "/etc/passwd", "C:/x.png", "c:x.png",
                                 "\\\\server\\share\\x.png", "inputs//x.png", "inputs/", "./inputs/x.png",
                                 "inputs/./x.png", "inputs/.x.png", "inputs\\..\\..\\x.png"])
def test_spec_paths_are_split_into_safe_components_only(rel):
    with pytest.raises(MVP4DError, match="inputs.reference_image"):
        split_rel(rel, "inputs.reference_image")


def _spec(**cameras) -> dict:
    cam = {"width": 64, "height": 64, "fx": 80.0, "fy": 80.0, "cx": 32.0, "cy": 32.0,
           "world_to_cam": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 1]]}
    return {"schema_version": 1, "inputs": {"reference_image": "inputs/reference.png"},
            "cameras": {"cameras": [{**cam, "name": n} for n in cameras["names"]]}}


@pytest.mark.parametrize("name", ["../../escape", "/tmp/abs", "..", "a/b", "CON", ".hidden", "x\x00y", ""])
def test_camera_names_are_checked_when_the_spec_is_loaded(name):
    with pytest.raises(MVP4DError) as ei:
        JobSpec.from_json(_spec(names=["key00", name]))
    assert ei.value.code == "BAD_INPUT" and "cameras.cameras[1].name" in ei.value.message


@pytest.mark.parametrize("a, b", [("Cam", "cam"), ("CAM", "cam"), ("\u00e9", "e\u0301"), ("K\u00e9y", "k\u00c9Y")])
def test_camera_names_meeting_on_case_insensitive_disks_are_refused(a, b):
    with pytest.raises(MVP4DError, match=r"cameras.cameras\[1\].name .* same folder"):
        JobSpec.from_json(_spec(names=[a, b]))


# ------------------------------------------------------------------------------------------------
# confine(): links
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def world(tmp_path):
    """``job/`` (a real job with one input) next to ``outside/`` (a user's folder with a file)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("user data")
    img = tmp_path / "face.png"
    img.write_bytes(b"\x89PNG fake")
    create_job(tmp_path / "job", img, JobSpec(inputs=InputsSpec(reference_image="")))
    return tmp_path / "job", outside


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(folder.rglob("*"))}


def test_confine_refuses_each_kind_of_escaping_link(world):
    job, outside = world
    (job / "stages").mkdir()
    (job / "stages" / "corpus").symlink_to(outside, target_is_directory=True)  # a folder link
    with pytest.raises(MVP4DError, match="may not leave the job folder"):
        confine(job, "stages/corpus/views", "key00")
    (job / "outputs").mkdir()
    (job / "outputs" / "avatar.ply").symlink_to(outside / "precious.txt")  # a file link
    with pytest.raises(MVP4DError, match="symbolic link"):
        confine(job, "outputs/avatar.ply")
    (job / "hop2").symlink_to(outside)
    (job / "hop1").symlink_to(job / "hop2")  # a chain: inside -> inside -> outside
    with pytest.raises(MVP4DError, match="may not leave"):
        confine(job, "hop1/precious.txt")
    (job / "dangling").symlink_to(outside / "not-yet")  # a dangling link out: writing would create it
    with pytest.raises(MVP4DError, match="may not leave"):
        confine(job, "dangling")
    (job / "rel").symlink_to(Path("..") / "outside")  # a relative link out
    with pytest.raises(MVP4DError, match="may not leave"):
        confine(job, "rel")
    (job / "loop").symlink_to(job / "loop")
    with pytest.raises(MVP4DError):
        confine(job, "loop/x")
    (job / "inner").symlink_to(job / "inputs")  # a link that stays inside is fine
    assert confine(job, "inner", "reference.png").read_bytes() == b"\x89PNG fake"
    assert snapshot(outside) == {"precious.txt": b"user data"}


def test_check_tree_finds_a_deep_link_out(world):
    job, outside = world
    deep = job / "stages" / "corpus" / "mmvdm" / "frames"
    deep.mkdir(parents=True)
    check_tree(job)
    (deep / "key00").symlink_to(outside)
    with pytest.raises(MVP4DError, match=r"stages/corpus/mmvdm/frames/key00 may not leave"):
        check_tree(job)


@pytest.mark.parametrize("where", ["events.jsonl", "inputs/reference.png", "stages/corpus/views/key00/0000.png"])
def test_a_pipe_in_the_job_is_refused_instead_of_hanging(world, where, capfd):
    job, _ = world
    p = job / where
    p.parent.mkdir(parents=True, exist_ok=True)
    p.unlink(missing_ok=True)
    os.mkfifo(p)
    ran: list[str] = []
    assert run_job(job, stages=[_runner_stage(ran)]) == 1  # the job's own sink: it must not open the pipe
    assert f"{where} is not a regular file" in _last_error(job, capfd).message and ran == []


def _last_error(job: Path, capfd) -> Event:
    """The run's last error event, from stdout or, when it is a plain file, the job's log."""
    lines = capfd.readouterr().out.splitlines()
    log = job / "events.jsonl"
    if log.is_file() and not log.is_symlink():
        lines += log.read_text().splitlines()
    errors = [e for e in map(Event.loads, lines) if e.type == "error"]
    assert errors, lines
    return errors[-1]


def _runner_stage(record: list[str]):
    def run(ctx):
        record.append(ctx.stage)
        out = ctx.path("outputs/result.txt")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("ours")
        (ctx.stage_dir / "x.txt").write_text("ours")
        return {"result": "outputs/result.txt"}

    return Stage("a", run)


@pytest.mark.parametrize("link", ["events.jsonl", "outputs", "stages/a", "stages", "inputs/reference.png",
                                  "job.lock", "cancel", "stages/a/done.json"])
def test_run_refuses_a_job_with_a_link_out_and_writes_nothing_outside(world, link, capfd):
    job, outside = world
    (job / "events.jsonl").unlink(missing_ok=True)
    target = outside / "precious.txt" if link in ("events.jsonl", "inputs/reference.png", "job.lock", "cancel",
                                                    "stages/a/done.json") else outside
    path = job / link
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    path.symlink_to(target)
    before = snapshot(outside)
    ran: list[str] = []
    assert run_job(job, stages=[_runner_stage(ran)]) == 1
    err = _last_error(job, capfd)
    assert err.code == "BAD_INPUT" and ("leave the job" in err.message), err.message
    assert ran == [] and snapshot(outside) == before


def test_run_on_a_folder_without_a_job_creates_nothing(tmp_path, capfd):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    assert run_job(tmp_path / "user", stages=[]) == 1
    assert run_job(tmp_path / "nothing", stages=[]) == 1
    assert [p.name for p in (tmp_path / "user").iterdir()] == ["notes.txt"]
    assert not (tmp_path / "nothing").exists()
    assert "no job.json" in capfd.readouterr().out


def test_create_job_refuses_a_users_folder_without_touching_it(tmp_path):
    img = tmp_path / "face.png"
    img.write_bytes(b"\x89PNG fake")
    user = tmp_path / "user"
    (user / "inputs").mkdir(parents=True)
    (user / "inputs" / "holiday.png").write_bytes(b"mine")
    with pytest.raises(MVP4DError, match="not empty"):
        create_job(user, img)
    assert snapshot(user) == {"inputs": b"<dir>", "inputs/holiday.png": b"mine"}  # not even a job.lock
    (tmp_path / "file").write_text("x")
    with pytest.raises(MVP4DError, match="not a folder"):
        create_job(tmp_path / "file", img)


def test_create_job_takes_up_an_interrupted_creation(tmp_path):
    img = tmp_path / "face.png"
    img.write_bytes(b"\x89PNG fake")
    job = tmp_path / "job"
    (job / "inputs").mkdir(parents=True)
    (job / "inputs" / "reference.png").write_bytes(b"\x89PN")  # killed while copying
    (job / "inputs" / ".reference.png.abcd1234.part.png").write_bytes(b"\x89")
    (job / LOCK_NAME).write_text("")
    spec = create_job(job, img)
    assert (job / spec.inputs.reference_image).read_bytes() == b"\x89PNG fake"


def test_unsafe_input_suffix_does_not_reach_a_file_name(tmp_path):
    img = tmp_path / "face.p\nng"
    img.write_bytes(b"\x89PNG fake")
    assert create_job(tmp_path / "job", img).inputs.reference_image == "inputs/reference.png"


# ------------------------------------------------------------------------------------------------
# class 8: temporaries of an interrupted run
# ------------------------------------------------------------------------------------------------


def test_leftover_temporaries_anywhere_in_the_job_are_removed_on_the_next_run(world):
    job, outside = world
    leftovers = [job / "outputs" / ".corpus_preview.png.k2j4_x9a.part.png",
                 job / "stages" / "corpus" / "views" / ".key00.abcdefgh.part",
                 job / "stages" / "corpus" / "mmvdm" / "frames" / "key00" / ".0003.png.0123abcd.part.png",
                 job / "inputs" / ".reference.png.zzzzzzzz.part.png",
                 job / ".job.json.a1b2c3d4.part"]
    for p in leftovers:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.suffix == ".part" and "views" in str(p):
            p.mkdir()
            (p / "0000.png").write_bytes(b"x")
        else:
            p.write_bytes(b"half")
    user_lookalike = job / "outputs" / ".my.notes.part"  # not a name our temporaries have
    user_lookalike.write_text("keep")
    (job / "outputs" / "elsewhere").symlink_to(job / "stages")  # links are not followed (this one stays inside)
    sink = EventSink(job / "events.jsonl", stream=None)
    assert run_job(job, stages=[_runner_stage([])], sink=sink) == 0
    assert not any(p.exists() for p in leftovers)
    assert user_lookalike.read_text() == "keep"
    assert any("removed 5 temporary" in (e.message or "") for e in sink.history)
    assert snapshot(outside) == {"precious.txt": b"user data"}


def test_remove_partials_does_not_follow_links_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".victim.abcdefgh.part").write_text("theirs")
    job = tmp_path / "job"
    job.mkdir()
    (job / "link").symlink_to(outside)
    assert remove_partials(job, recursive=True) == 0
    assert (outside / ".victim.abcdefgh.part").read_text() == "theirs"


def test_remove_inside_refuses_paths_outside_its_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "f").write_text("x")
    for bad in (tmp_path / "other" / "f", tmp_path / "root" / ".." / "other" / "f", tmp_path / "root"):
        with pytest.raises(MVP4DError):
            remove_inside(bad, tmp_path / "root")
    (tmp_path / "root" / "link").symlink_to(tmp_path / "other")
    remove_inside(tmp_path / "root" / "link", tmp_path / "root")  # the link goes, its target stays
    assert (tmp_path / "other" / "f").read_text() == "x"


# ------------------------------------------------------------------------------------------------
# class 2: nothing of the user's deleted or overwritten
# ------------------------------------------------------------------------------------------------


def test_atomic_dir_never_deletes_an_existing_folder_unless_its_owner_says_so(tmp_path):
    target = tmp_path / "w"
    target.mkdir()
    (target / "user.txt").write_text("mine")
    with pytest.raises(MVP4DError) as ei:
        with atomic_dir(target) as tmp:
            (tmp / "model.safetensors").write_bytes(b"new")
    assert ei.value.code == "OUTPUT_EXISTS" and (target / "user.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w"]  # no temporary left either
    empty = tmp_path / "empty"
    empty.mkdir()
    with atomic_dir(empty) as tmp:  # an empty folder is taken over
        (tmp / "a").write_text("1")
    with atomic_dir(empty, replace=True) as tmp:  # our own folder, replaced as a whole
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in empty.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "w"]


def test_publish_dir_swaps_in_only_our_files(tmp_path):
    out = tmp_path / "frames"
    with publish_dir(out) as tmp:  # new folder: appears complete
        for n in ("0000.ply", "0001.ply", "0002.ply"):
            (tmp / n).write_text(f"v1 {n}")
    (out / "README.txt").write_text("the user's note")
    with publish_dir(out) as tmp:  # ours: re-export with fewer frames, no --overwrite needed
        for n in ("0000.ply", "0001.ply"):
            (tmp / n).write_text(f"v2 {n}")
    assert sorted(p.name for p in out.iterdir()) == [OUTPUT_MARKER, "0000.ply", "0001.ply", "README.txt"]
    assert (out / "0000.ply").read_text() == "v2 0000.ply" and (out / "README.txt").read_text() == "the user's note"
    assert json.loads((out / OUTPUT_MARKER).read_text())["files"] == ["0000.ply", "0001.ply"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


def test_publish_dir_refuses_a_users_folder_unless_overwrite_and_then_deletes_nothing(tmp_path):
    user = tmp_path / "Documents"
    user.mkdir()
    (user / "thesis.pdf").write_bytes(b"years of work")
    (user / "0000.ply").write_text("their own ply")
    before = snapshot(user)
    with pytest.raises(MVP4DError) as ei:
        with publish_dir(user) as tmp:
            (tmp / "0000.ply").write_text("ours")
    assert ei.value.code == "OUTPUT_EXISTS" and snapshot(user) == before
    with publish_dir(user, overwrite=True) as tmp:
        (tmp / "0000.ply").write_text("ours")
        (tmp / "0001.ply").write_text("ours")
    assert (user / "thesis.pdf").read_bytes() == b"years of work" and (user / "0000.ply").read_text() == "ours"
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "filelink").symlink_to(tmp_path / "file.txt")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for bad in ("file.txt", "filelink", "dangling"):  # a file, a link to one, a dangling link: never a folder
        with pytest.raises(MVP4DError, match="not a folder"):
            with publish_dir(tmp_path / bad, overwrite=True):
                pass
    assert (tmp_path / "file.txt").read_text() == "x" and not (tmp_path / "nowhere").exists()
    other = tmp_path / "Pictures"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    (tmp_path / "dirlink").symlink_to(other)  # a link the user gives to their folder is that folder
    with pytest.raises(MVP4DError, match="not empty"):
        with publish_dir(tmp_path / "dirlink"):
            pass
    assert snapshot(other) == {"cat.jpg": b"meow"}


def test_single_file_outputs_are_not_overwritten_without_overwrite(tmp_path):
    f = tmp_path / "avatar.ply"
    f.write_text("the user's")
    with pytest.raises(MVP4DError, match="already exists") as ei:
        check_new_file(f)
    assert ei.value.code == "OUTPUT_EXISTS" and "--overwrite" in ei.value.hint
    assert check_new_file(f, overwrite=True) == f
    with pytest.raises(MVP4DError, match="is a folder"):
        check_new_file(tmp_path, overwrite=True)
    link = tmp_path / "link.ply"
    link.symlink_to(f)
    with atomic_path(check_new_file(link, overwrite=True)) as tmp:  # --overwrite replaces the link, not its target
        tmp.write_text("ours")
    assert f.read_text() == "the user's" and not link.is_symlink() and link.read_text() == "ours"


def test_check_output_folder_accepts_only_our_names(tmp_path):
    d = tmp_path / "track"
    d.mkdir()
    (d / "camera.json").write_text("{}")
    assert check_output_folder(d, {"camera.json"}) == d
    (d / "cv.pdf").write_text("x")
    with pytest.raises(MVP4DError, match="cv.pdf"):
        check_output_folder(d, {"camera.json"})


# ------------------------------------------------------------------------------------------------
# the job lock
# ------------------------------------------------------------------------------------------------


def test_second_run_of_a_locked_job_refuses_and_leaves_the_log_alone(world, capfd):
    job, _ = world
    ran: list[str] = []
    with JobLock(job):
        log_before = (job / "events.jsonl").read_bytes() if (job / "events.jsonl").exists() else b""
        assert run_job(job, stages=[_runner_stage(ran)]) == 1
        err = _last_error(job, capfd)
        assert err.code == "JOB_LOCKED" and f"process {os.getpid()}" in err.message
        assert ran == [] and not stage_done(job, "a")
        assert ((job / "events.jsonl").read_bytes() if (job / "events.jsonl").exists() else b"") == log_before
        with pytest.raises(MVP4DError) as ei:
            create_job(job, job / "inputs" / "reference.png")
        assert ei.value.code == "JOB_LOCKED"
    assert run_job(job, stages=[_runner_stage(ran)]) == 0 and ran == ["a"]  # released: runs


def test_stale_lock_of_a_killed_process_does_not_block(world):
    job, _ = world
    code = (f"import sys, time; sys.path.insert(0, {str(Path.cwd())!r}); from backend.joblock import JobLock; "
            f"JobLock({str(job)!r}).acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(MVP4DError) as ei:
            JobLock(job).acquire()
        assert ei.value.code == "JOB_LOCKED" and str(proc.pid) in ei.value.message
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert read_holder(job)["pid"] == proc.pid  # the note stays, the lock does not
    with JobLock(job):
        assert read_holder(job)["pid"] == os.getpid()


def test_lock_file_link_out_is_refused(world):
    job, outside = world
    (job / LOCK_NAME).unlink(missing_ok=True)
    (job / LOCK_NAME).symlink_to(outside / "precious.txt")
    with pytest.raises(MVP4DError, match="may not leave"):
        JobLock(job).acquire()
    assert (outside / "precious.txt").read_text() == "user data"


@pytest.mark.parametrize("name", ["events.jsonl", LOCK_NAME])
def test_files_written_in_place_may_not_be_hard_links_to_a_users_file(world, name, capfd):
    job, outside = world
    (job / name).unlink(missing_ok=True)
    os.link(outside / "precious.txt", job / name)  # same inode: appending or truncating would change theirs
    ran: list[str] = []
    assert run_job(job, stages=[_runner_stage(ran)]) == 1
    assert "hard link" in capfd.readouterr().out and ran == []
    assert (outside / "precious.txt").read_text() == "user data"


def test_names_fit_under_the_filesystem_limit_with_our_temporary_affixes(tmp_path):
    name = "\u00e9" * (MAX_NAME_BYTES // 2)  # the longest accepted name, two bytes per character
    with atomic_dir(tmp_path / check_name(name)) as tmp:
        (tmp / "0000.png").write_bytes(b"x")
    with tempfile.TemporaryDirectory() as d, atomic_path(Path(d) / f"{name}.png") as tmp:
        tmp.write_bytes(b"x")
