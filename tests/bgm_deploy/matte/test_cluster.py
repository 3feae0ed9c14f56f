"""The matte job on a Ray cluster (``bgm_deploy.matte.cluster``): a real local cluster of two
nodes on 127.0.0.1 (``ray.cluster_utils.Cluster``, one CPU each), the same outputs as the
one-machine job, a worker killed mid-task, and a driver interrupted and rerun.

Every job here runs under a deadline (a watchdog interrupts it), so a hung cluster fails the
test instead of the suite.
"""

from __future__ import annotations

import _thread
import contextlib
import itertools
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

# Ray takes 127.0.0.1 as every node's address (set before ray is imported): the test cluster
# listens on loopback only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

av = pytest.importorskip("av")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "runtimes"))
import model_files  # noqa: E402

from benchmarks.make_video_clips import ClipSpec, make_clip  # noqa: E402
from bgm_deploy.cli import cli  # noqa: E402
from bgm_deploy.matte import ClusterOptions, MatteBatches, MatteOptions, matte  # noqa: E402
from bgm_deploy.matte.cluster import SEGMENTS_DIR, check_cluster_job, plan_segments  # noqa: E402
from bgm_deploy.matte.video_io import VideoSource  # noqa: E402
from bgm_deploy.model_spec import ModelSpec  # noqa: E402
from exporters.atomic import TEMP_MARKER  # noqa: E402
from model.errors import MissingExtraError, UsageError  # noqa: E402

PAIR = Path(__file__).resolve().parents[3] / "bgm_deploy" / "data" / "pairs" / "astronaut_coffee_640x480"
JOB_DEADLINE = 150.0  # seconds any one job may take on 2 loaded cores


@contextlib.contextmanager
def deadline(seconds: float = JOB_DEADLINE) -> Iterator[None]:
    """Interrupts the main thread (the job stops cleanly, as on Ctrl-C) after ``seconds``."""
    fired = threading.Event()
    done = threading.Event()

    def watch() -> None:
        if not done.wait(seconds):
            fired.set()
            _thread.interrupt_main()

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    except KeyboardInterrupt:
        if fired.is_set():
            pytest.fail(f"the job did not finish within {seconds:g} s")
        raise
    finally:
        done.set()
        watcher.join()


# -- inputs ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_files.model_file("onnx", tmp_path_factory.getbasetemp() / "bgm_models")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A VFR 160x120 clip with AAC audio and a keyframe every 8 frames, its plate, and a
    folder of photos (640x480, so a photo task lasts long enough to be killed)."""
    root = tmp_path_factory.mktemp("cluster_inputs")
    clip, _, plate = make_clip(root / "clip.mp4", spec=ClipSpec(size=(160, 120), frames=48, vfr=True, audio=True,
                                                                 gop=8, seed=3))
    Image.fromarray(plate).save(root / "plate.png")
    photos = root / "photos"
    photos.mkdir()
    source = Image.open(PAIR / "src.jpg")
    for index in range(8):  # the same scene, shifted: distinct images
        Image.fromarray(np.roll(np.asarray(source), 4 * index, axis=1)).save(photos / f"p{index}.png")
    shutil.copy(PAIR / "bgr.jpg", root / "bgr.jpg")
    return {"root": root, "clip": clip, "plate": root / "plate.png", "photos": photos, "bgr": root / "bgr.jpg"}


FOOTAGE = MatteOptions(outputs=("pha", "fgr", "rgba"), formats={"pha": "ffv1", "fgr": "h264", "rgba": "png"})
PHOTOS = MatteOptions(outputs=("pha", "fgr"))


@pytest.fixture(scope="module")
def reference(inputs: dict[str, Path], onnx_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The one-machine runs the cluster's outputs must equal (one thread, as each worker runs)."""
    root = tmp_path_factory.mktemp("cluster_reference")
    spec = ModelSpec(model=str(onnx_model), threads=1)
    matte(inputs["clip"], inputs["plate"], root / "footage", spec, FOOTAGE)
    matte(inputs["photos"], inputs["bgr"], root / "photos", spec, PHOTOS)
    return {"footage": root / "footage", "photos": root / "photos"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two Ray nodes on 127.0.0.1, one CPU each, small object stores, no dashboard, logs in tmp."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    temp = tmp_path_factory.mktemp("ray")
    node = {"num_cpus": 1, "object_store_memory": 80 << 20, "node_ip_address": "127.0.0.1", "include_dashboard": False}
    # Ray's Cluster writes the head's address to $RAY_TMPDIR/ray/ray_current_cluster without
    # creating that folder (/tmp/ray when unset, absent on a fresh machine): keep it in tmp.
    (temp / "ray").mkdir()
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = str(temp)
    started = time.perf_counter()
    cluster = Cluster(initialize_head=False)
    try:
        cluster.add_node(**node, temp_dir=str(temp))  # the first node is the head
        cluster.add_node(**node)
        cluster.wait_for_nodes(timeout=120)
        assert time.perf_counter() - started < 120, "the test cluster took too long to start"
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()  # also when a node failed to start: no Ray process outlives the tests
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved


def _options(cluster: Any, **fields: Any) -> ClusterOptions:
    return ClusterOptions(cluster.address, **fields)


def _raylet_pids(cluster: Any) -> set[int]:
    from ray._private import ray_constants

    pids = set()
    for node in [cluster.head_node, *cluster.worker_nodes]:
        for info in node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []):
            pids.add(info.process.pid)
    return pids


def _busy_worker(raylets: set[int], method: str) -> int | None:
    """A worker process of our cluster running ``MatteWorker.<method>`` now (Ray titles it so)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if title.startswith(f"ray::MatteWorker.{method}") and parent in raylets:
            return int(entry)
    return None


class Killer(threading.Thread):
    """Kills one busy worker process (SIGKILL) as soon as one runs ``method``."""

    def __init__(self, cluster: Any, method: str) -> None:
        super().__init__(daemon=True)
        self.raylets, self.method = _raylet_pids(cluster), method
        self.killed: int | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed is None:
            pid = _busy_worker(self.raylets, self.method)
            if pid is not None:
                time.sleep(0.2)  # mid-task: it has started writing
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    self.killed = pid
            time.sleep(0.02)


# -- checks ------------------------------------------------------------------------------------------
def _video(path: Path) -> dict[str, Any]:
    with av.open(str(path)) as container:
        streams = [stream.type for stream in container.streams]
        audio = container.streams.audio[0] if container.streams.audio else None
        audio_packets = [(p.pts, bytes(p)) for p in container.demux(audio) if p.pts is not None] if audio else []
    with av.open(str(path)) as container:
        frames = [(frame.pts, frame.to_ndarray()) for frame in container.decode(video=0)]
    return {"streams": streams, "pts": [pts for pts, _ in frames], "frames": [image for _, image in frames],
            "audio": audio_packets}


def _assert_same_footage(out: Path, ref: Path) -> None:
    for name in ("pha.mkv", "fgr.mp4"):
        got, want = _video(out / name), _video(ref / name)
        assert got["streams"] == want["streams"] == ["video", "audio"], name
        assert got["pts"] == want["pts"], f"{name}: timestamps differ"
        assert len(got["frames"]) == 48
        assert got["audio"] == want["audio"], f"{name}: the audio packets differ"
        if name.endswith(".mkv"):  # lossless: the frames equal the one-machine run's
            assert all(np.array_equal(a, b) for a, b in zip(got["frames"], want["frames"])), name
    frames = sorted(p.name for p in (out / "rgba").iterdir())
    assert frames == sorted(p.name for p in (ref / "rgba").iterdir()) and len(frames) == 48
    for name in frames:
        assert np.array_equal(np.asarray(Image.open(out / "rgba" / name)), np.asarray(Image.open(ref / "rgba" / name)))
    _assert_clean(out)


def _assert_same_photos(out: Path, ref: Path) -> None:
    for kind in ("pha", "fgr"):
        names = sorted(p.name for p in (out / kind).iterdir())
        assert names == sorted(p.name for p in (ref / kind).iterdir()) and len(names) == 8
        for name in names:
            assert np.array_equal(np.asarray(Image.open(out / kind / name)), np.asarray(Image.open(ref / kind / name)))
    _assert_clean(out)


def _assert_clean(out: Path) -> None:
    """No temp file, no partial file, no segment left anywhere under the output."""
    leftovers = [p for p in out.rglob("*") if TEMP_MARKER in p.name or p.name.endswith(".part")]
    assert leftovers == []
    assert not (out / SEGMENTS_DIR).exists()


# -- without a cluster ----------------------------------------------------------------------------------
def test_options_checked_before_any_work() -> None:
    with pytest.raises(UsageError, match="--ray-workers 0"):
        ClusterOptions("local", workers=0)
    with pytest.raises(UsageError, match="segment-seconds"):
        ClusterOptions("local", segment_seconds=0)
    spec = ModelSpec(seed=0)
    for options, message in ((MatteOptions(max_frames=3), "--max-frames"),
                             (MatteOptions(allow_partial=True), "--allow-partial"),
                             (MatteOptions(align=True), "--align-mode frame")):
        with pytest.raises(UsageError, match=message):
            check_cluster_job(options, footage=True, live=False, sequence=False, servers=None, model=spec)
    with pytest.raises(UsageError, match="live source"):
        check_cluster_job(MatteOptions(), footage=True, live=True, sequence=False, servers=None, model=spec)
    with pytest.raises(UsageError, match="--server are alternatives"):
        check_cluster_job(MatteOptions(), footage=False, live=False, sequence=False, servers=object(), model=None)
    check_cluster_job(MatteOptions(align=True, align_mode="frame"), footage=True, live=False, sequence=False,
                      servers=None, model=spec)


def test_cli_refuses_what_does_not_apply(inputs: dict[str, Path], onnx_model: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["matte", "--src", str(inputs["clip"]), "--bgr", str(inputs["plate"]), "-o", str(tmp_path / "out"),
            "--model", str(onnx_model)]
    for extra, message in ((["--ray", "local", "--max-frames", "3"], "--max-frames does not apply with --ray"),
                           (["--ray-workers", "2"], "--ray-workers applies with --ray only")):
        result = runner.invoke(cli, base + extra)
        assert result.exit_code == 2, result.output
        assert result.output.strip().splitlines()[-1].startswith(f"Error: {message}")
    assert not (tmp_path / "out").exists()


def test_missing_ray_names_the_extra(inputs: dict[str, Path], onnx_model: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails
    with pytest.raises(MissingExtraError, match=r'pip install "bgm-deploy\[ray\]"'):
        matte(inputs["photos"], inputs["bgr"], tmp_path / "out", ModelSpec(model=str(onnx_model)), PHOTOS,
              cluster=ClusterOptions("local"))


def test_segments_start_at_keyframes(inputs: dict[str, Path]) -> None:
    source = VideoSource(inputs["clip"])
    info = source.info
    source.close()
    # A short clip: at least four segments per worker where keyframes allow (every 8 frames here).
    segments = plan_segments(str(inputs["clip"]), info, ClusterOptions("local", segment_seconds=0.5), workers=1)
    assert [s.first for s in segments] == [0, 8, 24, 32]  # the keyframes nearest to 12, 24, 36 (ties: earlier)
    assert sum(s.count for s in segments) == 48
    assert all(a.end_pts == b.start_pts for a, b in itertools.pairwise(segments)) and segments[-1].end_pts is None
    assert [s.first for s in plan_segments(str(inputs["clip"]), info, ClusterOptions("local"), workers=2)] == \
        [0, 8, 16, 24, 32, 40]
    # A long clip: segments of about segment_seconds (here 8 frames ~ 0.27 s at 30 fps).
    assert len(plan_segments(str(inputs["clip"]), info, ClusterOptions("local", segment_seconds=0.27), workers=1)) == 6


def test_map_batches_callable(inputs: dict[str, Path], onnx_model: Path) -> None:
    """The Ray Data callable, called as map_batches calls it (a dict of numpy columns)."""
    src = np.asarray(Image.open(PAIR / "src.jpg").convert("RGB"))[:120, :160]
    bgr = np.asarray(Image.open(PAIR / "bgr.jpg").convert("RGB"))[:120, :160]
    matter = MatteBatches(ModelSpec(model=str(onnx_model)).to_json(), outputs=("pha",))
    batch = matter({"src": np.stack([src, src]), "bgr": np.stack([bgr, bgr]), "id": np.array([1, 2])})
    assert batch["pha"].shape == (2, 120, 160) and batch["id"].tolist() == [1, 2]
    ragged = np.empty(2, dtype=object)
    ragged[:] = [src, src[:64, :80]]
    plates = np.empty(2, dtype=object)
    plates[:] = [bgr, bgr[:64, :80]]
    out = matter({"src": ragged, "bgr": plates})
    assert out["pha"][1].shape == (64, 80)
    assert np.array_equal(out["pha"][0], batch["pha"][0])


# -- on the cluster ---------------------------------------------------------------------------------------
def test_footage_equals_one_machine(cluster: Any, inputs: dict[str, Path], onnx_model: Path,
                                    reference: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with deadline():
        report = matte(inputs["clip"], inputs["plate"], out, ModelSpec(model=str(onnx_model)), FOOTAGE,
                       cluster=_options(cluster, segment_seconds=0.5), report_path=tmp_path / "report.json")
    assert report.ok and report.counts["matted"] == 48 and report.counts["written"] == 48
    stats = report.cluster
    assert stats["workers"] == 2 and stats["nodes"] == 2 and stats["retries"] == 0
    assert stats["tasks"] == len(stats["segments"]) == 6  # every keyframe: 4 per worker wanted
    assert sum(row["units"] for row in stats["per_worker"].values()) == 48
    assert all(row["units_per_second"] for row in stats["per_worker"].values())
    assert {"split", "start_workers", "run", "join"} <= set(stats["seconds"])
    _assert_same_footage(out, reference["footage"])


def test_photos_equal_one_machine_from_the_cli(cluster: Any, inputs: dict[str, Path], onnx_model: Path,
                                               reference: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    with deadline():
        result = CliRunner().invoke(cli, ["matte", "--src", str(inputs["photos"]), "--bgr", str(inputs["bgr"]),
                                          "-o", str(out), "--model", str(onnx_model), "--ray", cluster.address])
    assert result.exit_code == 0, result.output
    assert "8 matted" in result.output and "on 2 Ray worker(s), 2 node(s), 0 retries" in result.output
    _assert_same_photos(out, reference["photos"])


def test_worker_killed_mid_segment_is_retried(cluster: Any, inputs: dict[str, Path], onnx_model: Path,
                                              reference: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    killer = Killer(cluster, "segment")
    killer.start()
    try:
        with deadline():
            report = matte(inputs["clip"], inputs["plate"], out, ModelSpec(model=str(onnx_model)), FOOTAGE,
                           cluster=_options(cluster, segment_seconds=0.25))
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "no worker was caught mid-task"
    assert report.cluster["retries"] >= 1
    assert report.counts["written"] == 48
    _assert_same_footage(out, reference["footage"])


def test_worker_killed_mid_photos_is_retried(cluster: Any, inputs: dict[str, Path], onnx_model: Path,
                                             reference: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    killer = Killer(cluster, "photos")
    killer.start()
    try:
        with deadline():
            report = matte(inputs["photos"], inputs["bgr"], out, ModelSpec(model=str(onnx_model)), PHOTOS,
                           cluster=_options(cluster, photos_per_task=2))
    finally:
        killer.stop.set()
        killer.join()
    assert killer.killed is not None, "no worker was caught mid-task"
    assert report.cluster["retries"] >= 1 and report.ok
    assert sorted(item.status for item in report.items) == ["ok"] * 8  # each pair reported once
    _assert_same_photos(out, reference["photos"])


class _StopAfter:
    """A progress callback that interrupts the driver (as Ctrl-C would) once ``units`` are done."""

    def __init__(self, units: int) -> None:
        self.units = units

    def __call__(self, done: int, total: int | None, *_: Any) -> None:
        if done >= self.units:
            raise KeyboardInterrupt


def test_interrupted_driver_rerun_does_only_missing_segments(cluster: Any, inputs: dict[str, Path],
                                                             onnx_model: Path, reference: dict[str, Path],
                                                             tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = ModelSpec(model=str(onnx_model))
    options = _options(cluster, segment_seconds=0.25, workers=1)  # one segment at a time: a clean cut
    with deadline(), pytest.raises(KeyboardInterrupt):
        matte(inputs["clip"], inputs["plate"], out, spec, FOOTAGE, cluster=options, progress=_StopAfter(1))
    assert not (out / "pha.mkv").exists() and not (out / "fgr.mp4").exists()  # no final file yet
    assert (out / SEGMENTS_DIR / "plan.json").exists()
    with deadline():
        report = matte(inputs["clip"], inputs["plate"], out, spec, FOOTAGE, cluster=_options(cluster,
                                                                                             segment_seconds=0.25))
    stats = report.cluster
    assert stats["tasks_reused"] >= 1 and stats["tasks"] == len(stats["segments"]) - stats["tasks_reused"]
    assert report.counts["skipped"] > 0 and report.counts["matted"] + report.counts["skipped"] == 48
    _assert_same_footage(out, reference["footage"])


def test_interrupted_photo_job_resumes_with_skip_existing(cluster: Any, inputs: dict[str, Path], onnx_model: Path,
                                                          reference: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    spec = ModelSpec(model=str(onnx_model))
    with deadline(), pytest.raises(KeyboardInterrupt):
        matte(inputs["photos"], inputs["bgr"], out, spec, PHOTOS, progress=_StopAfter(2),
              cluster=_options(cluster, photos_per_task=2, workers=1))
    finished = {p.name for p in (out / "pha").iterdir()} if (out / "pha").exists() else set()
    assert 2 <= len(finished) < 8
    with deadline():
        report = matte(inputs["photos"], inputs["bgr"], out, spec,
                       MatteOptions(outputs=("pha", "fgr"), skip_existing=True), cluster=_options(cluster))
    assert report.count("skipped") >= 2 and report.count("ok") + report.count("skipped") == 8
    assert report.count("ok") == 8 - report.count("skipped")
    _assert_same_photos(out, reference["photos"])


def test_a_gpu_target_asks_the_cluster_for_gpus(cluster: Any, inputs: dict[str, Path], onnx_model: Path,
                                                tmp_path: Path) -> None:
    """The driver needs no GPU (the workers check their own); a cluster without GPUs is one line."""
    from model.errors import RuntimeUnavailableError

    with deadline(), pytest.raises(RuntimeUnavailableError, match="runs on a GPU but the Ray cluster .* has none"):
        matte(inputs["photos"], inputs["bgr"], tmp_path / "out", ModelSpec(model=str(onnx_model), target="cuda"),
              PHOTOS, cluster=_options(cluster))
    assert not (tmp_path / "out" / "pha").exists()


def test_image_sequence_equals_one_machine(cluster: Any, inputs: dict[str, Path], onnx_model: Path,
                                           tmp_path: Path) -> None:
    """A folder of numbered frames (--sequence): segments are any frame ranges, frame names kept."""
    frames = tmp_path / "frames"
    frames.mkdir()
    with av.open(str(inputs["clip"])) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == 20:
                break
            frame.to_image().save(frames / f"f{index + 1}.png")
    options = MatteOptions(outputs=("pha", "rgba"), formats={"pha": "ffv1", "rgba": "png"}, rate=24)
    matte(frames, inputs["plate"], tmp_path / "local", ModelSpec(model=str(onnx_model), threads=1), options,
          sequence=True)
    with deadline():
        report = matte(frames, inputs["plate"], tmp_path / "ray", ModelSpec(model=str(onnx_model)), options,
                       sequence=True, cluster=_options(cluster))
    assert report.counts["written"] == 20 and len(report.cluster["segments"]) == 8  # 4 per worker
    got, want = _video(tmp_path / "ray" / "pha.mkv"), _video(tmp_path / "local" / "pha.mkv")
    assert got["pts"] == want["pts"] and len(got["frames"]) == 20
    assert all(np.array_equal(a, b) for a, b in zip(got["frames"], want["frames"]))
    names = sorted(p.name for p in (tmp_path / "ray" / "rgba").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "local" / "rgba").iterdir()) and "f10.png" in names
    _assert_clean(tmp_path / "ray")
