"""Exports (coco, ytvis, davis, mot, objects), each read back with the library its users read it
with and compared object by object, frame by frame with masks.json: real clips, the tiny SAM 3 model,
the finalize step writing them; ``sam3v export`` on a stored masks.json giving the same bytes."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import av
import boto3
import motmetrics
import numpy as np
import pytest
from moto.server import ThreadedMotoServer
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pipeline.control.manifest import parse_manifest
from pipeline.core.errors import ProcessingError
from pipeline.core.layout import THUMBNAIL_FILES
from pipeline.core.specs import EXPORT_NAMES, VideoOptions
from pipeline.core.storage import LocalStorage
from tests import media
from tests.guards import assert_found_objects
from tests.services import RedisServer, start_worker, stop_process
from workers.chunks.video_steps import segment_video
from workers.media import rle
from workers.media.exports import EXPORTERS, make_exports
from workers.media.exports.davis import DAVIS_PALETTE, ZIP_TIME

FRAMES = 12
FILES = {"coco": "coco.json", "ytvis": "ytvis.json", "davis": "davis.zip", "mot": "mot.txt"}


def cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam3v.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def result(tiny, media_dir, tmp_path_factory) -> tuple[Path, dict]:
    """A real clip through every step, every export asked for at submit time; a low detection
    threshold so the tiny model's masks are several objects, some overlapping."""
    out = tmp_path_factory.mktemp("exports")
    clip = media.clip(media_dir, FRAMES + 4)
    opts = VideoOptions(outputs=["rle", *EXPORT_NAMES], max_frames=FRAMES, detection_threshold=0.2)
    segment_video(clip, tiny, opts, ["dog", "grass"], LocalStorage(out))
    doc = json.loads((out / "masks.json").read_text())
    assert_found_objects(doc)
    return out, doc


def shown_masks(doc: dict) -> dict[tuple[int, int], np.ndarray]:
    """{(source frame, object id): mask} for every non-empty mask of masks.json."""
    masks = {}
    for entry in doc["frames"]:
        for obj in entry["objects"]:
            mask = rle.decode(obj["segmentation"])
            if mask.any():
                masks[entry["frame"], obj["id"]] = mask
    return masks


def entry_of(doc: dict, frame: int, object_id: int) -> dict:
    entry = next(e for e in doc["frames"] if e["frame"] == frame)
    return next(o for o in entry["objects"] if o["id"] == object_id)


def test_every_export_is_written_beside_masks_json_and_listed(result):
    out, doc = result
    assert sorted(EXPORTERS) == sorted(EXPORT_NAMES)
    for name in FILES.values():
        assert (out / name).is_file()
    assert sorted(p.name for p in (out / "objects").iterdir()) == sorted(f"{o['id']}.mkv" for o in doc["objects"])
    assert doc["params"]["outputs"] == ["rle", *EXPORT_NAMES]
    assert not (out / "overlay.mp4").exists() and not (out / "mask.mp4").exists()  # none asked for


def test_coco_loads_in_pycocotools_and_matches_masks_json(result):
    out, doc = result
    coco = COCO(str(out / "coco.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["dog", "grass"]
    prompt_of = {o["id"]: o["prompt"] for o in doc["objects"]}
    images = coco.loadImgs(coco.getImgIds())
    assert [img["frame_index"] for img in images] == [e["frame"] for e in doc["frames"]]
    assert [img["file_name"] for img in images] == [f"frame_{e['frame']:06d}.jpg" for e in doc["frames"]]
    got = {}
    for img in images:
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
            key = (img["frame_index"], ann["track_id"])
            assert key not in got, f"two annotations for object {ann['track_id']} in frame {key[0]}"
            got[key] = coco.annToMask(ann).astype(bool)
            source = entry_of(doc, *key)
            assert ann["bbox"] == source["bbox"] and ann["score"] == source["score"]
            assert ann["attributes"]["track_id"] == ann["track_id"]  # where CVAT reads a track from
            assert coco.loadCats(ann["category_id"])[0]["name"] == prompt_of[ann["track_id"]]
            assert ann["area"] == int(got[key].sum())
    want = shown_masks(doc)
    assert got.keys() == want.keys()
    for key, mask in want.items():
        assert np.array_equal(got[key], mask), f"frame {key[0]}, object {key[1]}"


def test_ytvis_instances_decode_through_pycocotools_frame_by_frame(result):
    out, doc = result
    ytvis = json.loads((out / "ytvis.json").read_text())
    [video] = ytvis["videos"]
    frames = [e["frame"] for e in doc["frames"]]
    assert video["length"] == len(frames) == FRAMES
    assert video["file_names"] == [f"frame_{f:06d}.jpg" for f in frames]
    assert (video["height"], video["width"]) == (doc["video"]["height"], doc["video"]["width"])
    want = shown_masks(doc)
    seen = set()
    for ann in ytvis["annotations"]:
        assert ann["video_id"] == video["id"] and len(ann["segmentations"]) == len(frames)
        for frame, seg, box in zip(frames, ann["segmentations"], ann["bboxes"]):
            key = (frame, ann["track_id"])
            if seg is None:
                assert key not in want and box is None
                continue
            mask = mask_utils.decode(seg).astype(bool)  # as the ytvos API does with a compressed RLE
            assert np.array_equal(mask, want[key]), f"frame {frame}, object {ann['track_id']}"
            assert box == entry_of(doc, *key)["bbox"]
            seen.add(key)
    assert seen == want.keys()


def expected_labels(doc: dict, entry: dict) -> np.ndarray:
    """Independently of the export: id + 1 of the lowest object id covering each pixel, else 0."""
    labels = np.zeros((doc["video"]["height"], doc["video"]["width"]), np.uint8)
    for obj in sorted(entry["objects"], key=lambda o: o["id"]):
        mask = rle.decode(obj["segmentation"])
        labels[mask & (labels == 0)] = obj["id"] + 1
    return labels


def test_davis_pngs_read_back_as_the_masks(result):
    out, doc = result
    with zipfile.ZipFile(out / "davis.zip") as archive:
        assert archive.namelist() == [f"{e['frame']:05d}.png" for e in doc["frames"]]
        assert {i.date_time for i in archive.infolist()} == {ZIP_TIME}  # no build time: same bytes each run
        labelled = set()
        for entry in doc["frames"]:
            image = Image.open(io.BytesIO(archive.read(f"{entry['frame']:05d}.png")))
            assert image.mode == "P"
            assert image.getpalette()[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0]  # DAVIS: black, red, green
            labels = np.array(image)
            assert np.array_equal(labels, expected_labels(doc, entry)), f"frame {entry['frame']}"
            labelled |= set(np.unique(labels)) - {0}
    assert labelled, "no object drawn in any PNG: the comparison above held on empty masks"
    assert bytes(DAVIS_PALETTE[:12]) == bytes([0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0])


def test_mot_reads_in_motmetrics_with_one_row_per_shown_mask(result):
    out, doc = result
    table = motmetrics.io.loadtxt(str(out / "mot.txt"), fmt="mot15-2D")
    want = shown_masks(doc)
    assert set(table.index) == {(frame + 1, oid) for frame, oid in want}  # MOT frames count from 1
    for (frame_no, oid), row in table.iterrows():
        source = entry_of(doc, frame_no - 1, oid)
        # motmetrics takes the MATLAB 1 off x and y: it reads back masks.json's box.
        assert [row.X, row.Y, row.Width, row.Height] == pytest.approx(source["bbox"], abs=0.01)
        assert row.Confidence == pytest.approx(source["score"], abs=1e-6)


def test_object_videos_decode_losslessly_to_each_objects_masks(result):
    out, doc = result
    height, width = doc["video"]["height"], doc["video"]["width"]
    for obj in doc["objects"]:
        with av.open(str(out / "objects" / f"{obj['id']}.mkv")) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "ffv1"
            frames = [f.to_ndarray(format="gray") for f in container.decode(stream)]
        assert len(frames) == len(doc["frames"])
        for entry, got in zip(doc["frames"], frames):
            found = [o for o in entry["objects"] if o["id"] == obj["id"]]
            want = rle.decode(found[0]["segmentation"]) if found else np.zeros((height, width), bool)
            assert got.shape == (height, width)
            assert np.array_equal(got, np.where(want, 255, 0).astype(np.uint8)), \
                f"frame {entry['frame']}, object {obj['id']}"


def test_sam3v_export_of_a_local_result_gives_the_same_bytes(result, tmp_path):
    out, _ = result
    shutil.copy(out / "masks.json", tmp_path / "masks.json")
    done = cli("export", tmp_path, "--format", ",".join(EXPORT_NAMES))
    assert done.returncode == 0, done.stderr
    for name in FILES.values():
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    for mkv in (out / "objects").iterdir():
        assert (tmp_path / "objects" / mkv.name).read_bytes() == mkv.read_bytes(), mkv.name


def test_unknown_output_and_format_names_exit_2_naming_them(tmp_path, media_dir):
    clip = media.clip(media_dir, FRAMES + 4)
    done = cli("segment", clip, "--prompt", "dog", "--out", tmp_path / "o", "--outputs", "coco,nope")
    assert done.returncode == 2 and "'nope'" in done.stderr, done.stderr
    (tmp_path / "masks.json").write_text("{}")
    done = cli("export", tmp_path, "--format", "coco,nope")
    assert done.returncode == 2 and "'nope'" in done.stderr, done.stderr
    done = cli("export", tmp_path / "missing", "--format", "coco")
    assert done.returncode == 2 and "masks.json" in done.stderr, done.stderr


def test_a_manifest_line_asks_for_exports_by_name():
    data = "\n".join(json.dumps({"video": f"s3://bucket/{n}.mp4", "outputs": outputs})
                     for n, outputs in (("a", ["coco", "davis"]), ("b", ["coco", "nope"]))).encode()
    parsed = parse_manifest(data, "m.jsonl", default_prompt="dog")
    assert [(i.line, i.exports(), i.video_outputs()) for i in parsed.items] == [(1, ["coco", "davis"], [])]
    [rejected] = parsed.rejected
    assert rejected.line == 2 and "'nope'" in rejected.reason


# --- the rules, on a document made by hand: an empty mask, overlapping masks, an id too high ----

def hand_document(ids=(0, 1, 2)) -> dict:
    """Two 4x6 frames: in frame 7 object ids[0] and ids[1] overlap on one pixel and ids[2] is listed
    with an empty mask; in frame 8 only ids[1] is shown."""
    def obj(oid, pixels, score=0.5):
        mask = np.zeros((4, 6), bool)
        for y, x in pixels:
            mask[y, x] = True
        seg = rle.encode(mask)
        return {"id": oid, "score": score, "bbox": rle.bbox(seg), "segmentation": seg}

    a, b, c = ids
    frames = [{"frame": 7, "pts": 0.0, "objects": [obj(a, [(0, 0), (1, 1)], 0.9), obj(b, [(1, 1), (2, 2)], 0.8),
                                                    obj(c, [], 0.7)]},
              {"frame": 8, "pts": 0.04, "objects": [obj(b, [(3, 5)], 0.6)]}]
    return {"schema_version": 1, "model": {"id": "local:tiny"}, "params": {},
            "video": {"width": 6, "height": 4, "fps_rational": "25/1", "num_frames": 2},
            "prompts": ["cup", "dog"], "frames": frames,
            "objects": [{"id": a, "prompt": "dog", "first_frame": 7, "last_frame": 7},
                        {"id": b, "prompt": "cup", "first_frame": 7, "last_frame": 8},
                        {"id": c, "prompt": "dog", "first_frame": 7, "last_frame": 7}]}


def test_an_empty_mask_is_absent_and_overlaps_go_to_the_lower_id(tmp_path):
    doc = hand_document()
    made = make_exports(doc, EXPORT_NAMES, tmp_path)
    coco = json.loads(made["coco"].read_text())
    assert [(a["image_id"], a["track_id"], a["category_id"]) for a in coco["annotations"]] == [(1, 0, 2), (1, 1, 1),
                                                                                              (2, 1, 1)]
    ytvis = json.loads(made["ytvis"].read_text())
    assert [(a["track_id"], [s is not None for s in a["segmentations"]]) for a in ytvis["annotations"]] == [
        (0, [True, False]), (1, [True, True])]  # object 2 is never shown: no instance
    assert [r.split(",")[:2] for r in made["mot"].read_text().splitlines()] == [["8", "0"], ["8", "1"], ["9", "1"]]
    with zipfile.ZipFile(made["davis"]) as archive:
        first = np.array(Image.open(io.BytesIO(archive.read("00007.png"))))
    assert first[1, 1] == 1 and first[0, 0] == 1 and first[2, 2] == 2 and first.sum() == 4
    assert sorted(p.name for p in made["objects"].iterdir()) == ["0.mkv", "1.mkv", "2.mkv"]


def visual_document() -> dict:
    """hand_document in schema 2 (#22): object 0 prompted by a box on one frame, object 2 by
    clicks and a box on two frames (a list), object 1 by the text "cup"."""
    doc = {**hand_document(), "schema_version": 2}
    doc["objects"][0]["prompt"] = {"frame": 7, "box": [0.0, 0.0, 2.0, 2.0]}
    doc["objects"][2]["prompt"] = [{"frame": 7, "points": [[1.0, 1.0]], "labels": [1]},
                                   {"frame": 8, "box": [0.0, 0.0, 3.0, 3.0]}]
    return doc


def test_a_schema_2_document_exports_its_visual_objects_under_one_category(tmp_path):
    """Visually prompted objects (their prompt an object or a list, not a name) share one category,
    "visual prompts", after the text prompts'; read back by pycocotools."""
    made = make_exports(visual_document(), EXPORT_NAMES, tmp_path)
    coco = COCO(str(made["coco"]))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == [(1, "cup"), (2, "dog"),
                                                                               (3, "visual prompts")]
    assert [(a["track_id"], a["category_id"]) for a in coco.loadAnns(coco.getAnnIds())] == [(0, 3), (1, 1), (1, 1)]
    assert coco.dataset["info"]["schema_version"] == 2
    ytvis = json.loads(made["ytvis"].read_text())
    assert [c["name"] for c in ytvis["categories"]] == ["cup", "dog", "visual prompts"]
    assert [(a["track_id"], a["category_id"]) for a in ytvis["annotations"]] == [(0, 3), (1, 1)]
    assert len(made["mot"].read_text().splitlines()) == 3 and made["davis"].stat().st_size
    # the same masks as the version-1 document, only the categories differ
    (tmp_path / "v1").mkdir()
    plain = make_exports(hand_document(), ["mot"], tmp_path / "v1")
    assert plain["mot"].read_bytes() == made["mot"].read_bytes()


def test_a_run_with_a_box_prompt_writes_every_export(tiny, media_dir, tmp_path):
    """A real run with a text prompt and a visually prompted object: masks.json is schema 2 and
    the finalize step writes every export (a description as a category name failed them all)."""
    from pipeline.core.visual_prompts import ObjectPrompt

    opts = VideoOptions(outputs=["rle", *EXPORT_NAMES], max_frames=3, detection_threshold=0.2)
    box = ObjectPrompt(id=5, frame=1, box=[100, 100, 300, 200])
    segment_video(media.clip(media_dir, 4), tiny, opts, ["dog"], LocalStorage(tmp_path), objects=[box])
    doc = json.loads((tmp_path / "masks.json").read_text())
    assert doc["schema_version"] == 2
    assert doc["objects"][0]["id"] == 5  # visual objects first, text-found ones after
    assert doc["objects"][0]["prompt"] == {"frame": 1, "box": [100.0, 100.0, 300.0, 200.0]}
    coco = COCO(str(tmp_path / "coco.json"))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    assert names == {1: "dog", 2: "visual prompts"}
    tracks = {a["track_id"]: names[a["category_id"]] for a in coco.loadAnns(coco.getAnnIds())}
    assert tracks[5] == "visual prompts" and all(v == "dog" for k, v in tracks.items() if k != 5)
    for name in ("ytvis.json", "mot.txt", "davis.zip"):
        assert (tmp_path / name).stat().st_size, name
    assert (tmp_path / "objects" / "5.mkv").stat().st_size


def test_davis_refuses_an_object_id_an_8_bit_png_cannot_hold(tmp_path):
    with pytest.raises(ProcessingError, match="davis: object id 255"):
        make_exports(hand_document((0, 1, 255)), ["davis"], tmp_path)


# --- a job's S3 results, then `sam3v export` on them ---------------------------------------------

BUCKET = "sam3v-exports"


@pytest.fixture(scope="module")
def job_env(tiny_model_dir, tmp_path_factory):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    aws = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    redis_server = RedisServer(tmp_path_factory.mktemp("redis"))
    redis_server.start()
    env = {**os.environ, **aws, "SAM3V_BROKER_URL": redis_server.url, "SAM3V_STORAGE_URL": f"s3://{BUCKET}/results",
           "SAM3V_MODEL": str(tiny_model_dir), "SAM3V_TORCH_THREADS": "1",
           "SAM3V_CACHE": str(tmp_path_factory.mktemp("worker-cache")), "SAM3V_TASK_TIME_LIMIT": "40",
           "SAM3V_VISIBILITY_TIMEOUT": "45", "PYTHONUNBUFFERED": "1"}
    yield client, env
    redis_server.stop()
    server.stop()


def keys_under(client, prefix: str) -> dict[str, bytes]:
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: client.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read() for o in listed}


def test_sam3v_export_on_a_jobs_s3_results_gives_the_submit_time_bytes(job_env, media_dir, tmp_path):
    client, env = job_env
    clip = media.clip(media_dir, FRAMES + 4)
    client.upload_file(str(clip), BUCKET, "inputs/dog.mp4")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "dog", "video": f"s3://{BUCKET}/inputs/dog.mp4", "prompts": ["dog", "grass"],
                                    "max_frames": FRAMES, "detection_threshold": 0.2,
                                    "outputs": ["rle", *EXPORT_NAMES]}) + "\n")
    worker = start_worker(env, "gpu,cpu", "w1", tmp_path / "worker.log")
    try:
        done = cli("submit", manifest, env=env)
        assert done.returncode == 0, done.stderr
        job = done.stdout.strip().splitlines()[-1]
        end = time.monotonic() + 600
        while not keys_under(client, f"results/{job}/results.jsonl") and time.monotonic() < end:
            time.sleep(1)
    finally:
        stop_process(worker)
    [row] = [json.loads(x) for x in client.get_object(Bucket=BUCKET, Key=f"results/{job}/results.jsonl")["Body"].read()
             .splitlines()]
    assert row["state"] == "succeeded", (row, (tmp_path / "worker.log").read_text()[-3000:])
    prefix = f"results/{job}/dog/"
    assert row["outputs"] == {"masks": f"s3://{BUCKET}/{prefix}masks.json",
                              **{n: f"s3://{BUCKET}/{prefix}{FILES.get(n, n)}" for n in EXPORT_NAMES}}
    submitted = keys_under(client, prefix)
    doc = json.loads(submitted["masks.json"])
    assert_found_objects(doc)
    # Beside them: masks.json and the report's thumbnails (THUMBNAIL_FILES), which are not exports.
    exported = {k: v for k, v in submitted.items() if k != "masks.json" and k not in THUMBNAIL_FILES}
    assert sorted(exported) == sorted([*FILES.values(), *(f"objects/{o['id']}.mkv" for o in doc["objects"])])
    for key in exported:
        client.delete_object(Bucket=BUCKET, Key=prefix + key)

    done = cli("export", f"s3://{BUCKET}/{prefix}", "--format", ",".join(EXPORT_NAMES), env=env)
    assert done.returncode == 0, done.stderr
    again = keys_under(client, prefix)
    assert again.keys() == submitted.keys()
    for key, data in exported.items():
        assert again[key] == data, f"{key} differs from the one written at submit time"
