"""Visual prompts at every entry point (issue #22, item 4 and 5): the spec's checks, the manifest's
lines, `sam3v segment`'s flags (real subprocesses), the HTTP API (real API, worker, Redis, moto),
the probe task's check against the video, and a PNG mask read into COCO RLE (real pycocotools)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import httpx
import jsonschema
import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pydantic import ValidationError

from pipeline.control.manifest import MAX_MASK_BYTES, parse_manifest
from pipeline.core.errors import FieldError
from pipeline.core.specs import VideoSpec, first_error
from pipeline.core.visual_prompts import assigned_ids, check_against_video, exemplars_need_text, rle_runs, too_many
from sam3v.api.schemas import GenerateRequest, GenerationRequest, request_schema
from sam3v.cli.visual_flags import mask_from_png
from tests import media
from tests.test_api import A, api, enqueue, inputs, wait  # noqa: F401  (module fixtures)
from tests.test_cli import assert_user_error, run
from tests.test_pipeline import BUCKET, env, redis_server, s3  # noqa: F401  (module fixtures)
from workers.media.rle import encode

BOX = [10, 20, 100, 80]
DOG_SIZE = (1280, 720)  # dog24: 24 frames of 01_dog.mp4


def rle_of(mask: np.ndarray) -> dict:
    return encode(mask.astype(bool))


def blob(height: int, width: int) -> np.ndarray:
    m = np.zeros((height, width), bool)
    m[height // 4: height // 2, width // 3: width // 2] = True
    return m


def spec(**fields) -> VideoSpec:
    return VideoSpec(id="v", video="s3://b/v.mp4", **fields)


def refusal(**fields) -> tuple[str, str]:
    with pytest.raises(ValidationError) as err:
        spec(**fields)
    return first_error(err.value)


# --- the spec: what an entry says of itself ------------------------------------------------------

@pytest.mark.parametrize("objects, field, needle", [
    ([{"frame": 0, "points": [[1, 2]], "labels": [2]}], "objects[0].labels[0]", "0 (exclude)"),
    ([{"frame": 0, "points": [[1, 2], [3, 4]], "labels": [1]}], "objects[0].labels", "1 labels for 2 points"),
    ([{"frame": 0, "box": [1, 2, 0, 4]}], "objects[0].box", "zero area"),
    ([{"frame": 0, "box": [-1, 2, 3, 4]}], "objects[0].box", "0 or more"),
    ([{"frame": 0}], "objects[0]", "points, a box or a mask"),
    ([{"frame": 0, "points": []}], "objects[0].points", "empty"),
    ([{"frame": True, "box": BOX}], "objects[0].frame", "integer"),
    ([{"frame": -1, "box": BOX}], "objects[0].frame", "greater than or equal to 0"),
    ([{"frame": 0, "box": BOX, "colour": "red"}], "objects[0].colour", "Extra"),
    ([{"id": 3, "frame": 5, "box": BOX}, {"id": 3, "frame": 5, "points": [[1, 1]]}], "objects[1].id",
     "already given on frame 5"),
    ([{"frame": 0, "mask": {"size": [4, 4], "counts": ""}}], "objects[0].mask.counts", "empty"),
    ([{"frame": 0, "mask": {"size": [4, 4], "counts": "05"}}], "objects[0].mask.counts", "cover 5 pixels"),
    ([{"frame": 0, "mask": {"size": [4, 4], "counts": "zz"}}], "objects[0].mask.counts", "not a character"),
    ([{"frame": 0, "mask": {"size": [4, 4], "counts": "0"}}], "objects[0].mask.counts", "cover 0 pixels"),
    ([{"frame": 0, "mask": {"size": [0, 4], "counts": "0"}}], "objects[0].mask.size", "[height, width]"),
])
def test_spec_refuses_a_bad_object_naming_the_field(objects, field, needle):
    got_field, message = refusal(objects=objects)
    assert got_field == field and needle in message, (got_field, message)


def test_spec_refuses_an_empty_mask_and_a_bad_exemplar():
    empty = rle_of(np.zeros((6, 8), bool))
    assert refusal(objects=[{"frame": 0, "mask": empty}]) == ("objects[0].mask.counts", "the mask is empty (no pixel set)")
    assert refusal(exemplars=[{"frame": 0, "box": [1, 1, 5, 0]}])[0] == "exemplars[0].box"
    assert refusal(exemplars=[{"frame": 0, "box": BOX, "positive": "no"}])[0] == "exemplars[0].positive"
    assert refusal()[0] == "prompts"  # nothing to find at all


def test_spec_takes_visual_prompts_without_text_and_refinements_on_other_frames():
    s = spec(objects=[{"id": 4, "frame": 0, "box": BOX, "points": [[30, 40]], "labels": [0]},
                      {"id": 4, "frame": 9, "points": [[50, 50]]}, {"frame": 3, "mask": rle_of(blob(6, 8))}])
    assert s.prompts == [] and s.has_visual_prompts()
    assert s.objects[1].point_labels() == [1]
    assert assigned_ids(s.objects) == [4, 4, 0]
    # stored and read back (the job's record, then the worker)
    assert VideoSpec.model_validate(json.loads(s.model_dump_json())) == s


NEEDS_TEXT = "an exemplar sharpens a text prompt on its frame; give "
BOX_ONLY = "a concept given by boxes alone is not supported"


@pytest.mark.parametrize("fields", [
    {"exemplars": [{"frame": 2, "box": BOX}]},
    {"exemplars": [{"frame": 2, "box": BOX, "positive": False}], "objects": [{"frame": 0, "box": BOX}]},
])
def test_spec_refuses_exemplars_without_a_text_prompt(fields):
    """transformers' video model has no box-only concept: refused at the field, before any compute."""
    field, message = refusal(**fields)
    assert field == "exemplars" and message == exemplars_need_text("prompt (or the job's --prompt)"), message
    assert message.startswith(NEEDS_TEXT) and BOX_ONLY in message
    s = spec(prompts=["dog"], **fields)  # with a concept to sharpen, they are taken
    assert s.exemplars[0].box == (10.0, 20.0, 100.0, 80.0)
    assert VideoSpec.model_validate(json.loads(s.model_dump_json())) == s


def test_prompt_count_counts_objects_not_entries():
    s = spec(prompts=["dog"], objects=[{"id": 1, "frame": 0, "box": BOX}, {"id": 1, "frame": 5, "box": BOX},
                                       {"frame": 0, "points": [[1, 1]]}])
    assert too_many(1, s.objects, [], 3) is None  # dog + object 1 (two entries) + one unnamed
    assert too_many(1, s.objects, [], 2) == ("objects", "2 objects and 1 text prompt, at most 2 per video (SAM3V_MAX_PROMPTS)")


# --- the spec against the video ------------------------------------------------------------------

@pytest.mark.parametrize("fields, field, needle", [
    ({"objects": [{"frame": 24, "box": BOX}]}, "objects[0].frame", "past the end of the video: it has 24 frames"),
    ({"objects": [{"frame": 4, "box": BOX}], "start_frame": 5}, "objects[0].frame", "before start_frame 5"),
    ({"objects": [{"frame": 15, "box": BOX}], "start_frame": 5, "max_frames": 10}, "objects[0].frame",
     "past the last frame processed, 14"),
    ({"objects": [{"frame": 0, "box": [1200, 10, 100, 10]}]}, "objects[0].box", "outside the 1280x720 frame"),
    ({"objects": [{"frame": 0, "box": [0, 700, 10, 21]}]}, "objects[0].box", "outside the 1280x720 frame"),
    ({"objects": [{"frame": 0, "box": BOX}, {"frame": 0, "points": [[5, 5], [5, 721]]}]}, "objects[1].points[1]",
     "outside the 1280x720 frame"),
    ({"objects": [{"frame": 0, "mask": rle_of(blob(720, 1279))}]}, "objects[0].mask", "[720, 1279]"),
    ({"exemplars": [{"frame": 30, "box": BOX}], "prompts": ["dog"]}, "exemplars[0].frame", "past the end"),
    ({"exemplars": [{"frame": 0, "box": [0, 0, 1281, 5]}], "prompts": ["dog"]}, "exemplars[0].box", "outside"),
])
def test_check_against_video_names_the_field(fields, field, needle):
    with pytest.raises(FieldError) as err:
        check_against_video(spec(**fields), *DOG_SIZE, 24)
    assert str(err.value).startswith(f"{field}: ") and needle in str(err.value), str(err.value)
    assert err.value.exit_code == 2


def test_check_against_video_takes_what_fits():
    fits = spec(start_frame=5, max_frames=10,
                objects=[{"frame": 5, "box": [0, 0, 1280, 720]}, {"frame": 14, "points": [[1280, 720]]},
                         {"frame": 9, "mask": rle_of(blob(720, 1280))}],
                prompts=["dog"], exemplars=[{"frame": 14, "box": BOX}])
    check_against_video(fits, *DOG_SIZE, 24)


# --- PNG mask -> COCO RLE ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA"])
def test_png_mask_round_trips_through_coco_rle(mode, tmp_path):
    truth = blob(36, 64)
    truth[30:, 60:] = True  # a second region in a corner
    image = Image.fromarray(truth.astype(np.uint8) * 255)
    if mode == "P":  # an annotation tool's palette PNG: index 1 is the object
        image = Image.fromarray(truth.astype(np.uint8), "L").convert("P")
        image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    else:
        image = image.convert(mode)
    image.save(tmp_path / "m.png")
    rle = mask_from_png(tmp_path / "m.png")
    assert rle["size"] == [36, 64]
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
    assert np.array_equal(decoded, truth)
    # and the spec takes it as it is (our counts check agrees with pycocotools)
    assert spec(objects=[{"frame": 0, "mask": rle}]).objects[0].mask.counts == rle["counts"]


def test_rle_runs_agree_with_pycocotools():
    rng = np.random.default_rng(7)
    for shape in [(1, 1), (5, 3), (37, 51), (120, 90)]:
        m = rng.random(shape) > 0.6
        runs = rle_runs(encode(m)["counts"])
        assert sum(runs) == m.size and sum(runs[1::2]) == m.sum()


def test_png_mask_refusals(tmp_path):
    Image.new("L", (8, 8)).save(tmp_path / "m.jpg", "JPEG")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    from pipeline.core.errors import InputError

    for name, needle in (("m.jpg", "not a PNG"), ("junk.png", "not a readable PNG"), ("none.png", "no such file")):
        with pytest.raises(InputError, match=needle):
            mask_from_png(tmp_path / name)


# --- manifest ------------------------------------------------------------------------------------

def test_manifest_lines_with_visual_prompts(tmp_path):
    mask = rle_of(blob(6, 8))
    lines = [
        {"id": "box", "video": "s3://b/a.mp4", "objects": [{"id": 1, "frame": 40, "box": BOX}]},
        {"id": "mixed", "video": "s3://b/b.mp4", "prompt": "dog", "objects": [{"frame": 0, "mask": mask}],
         "exemplars": [{"frame": 3, "box": BOX, "positive": False}]},
        {"id": "text", "video": "s3://b/c.mp4"},  # no prompt: the job's default
    ]
    result = parse_manifest("\n".join(json.dumps(x) for x in lines).encode(), "m.jsonl", default_prompt="cat")
    assert not result.rejected
    box, mixed, text = result.items
    assert (box.prompts, box.objects[0].box, box.objects[0].id) == ([], (10.0, 20.0, 100.0, 80.0), 1)
    assert mixed.prompts == ["dog"] and mixed.objects[0].mask.counts == mask["counts"]
    assert mixed.exemplars[0].positive is False
    assert text.prompts == ["cat"] and not text.objects

    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerows([["id", "video", "prompt", "objects", "exemplars"],
                      ["a", "s3://b/a.mp4", "dog",
                       json.dumps([{"frame": 2, "points": [[5, 6], [7, 8]], "labels": [1, 0]}]),
                       json.dumps([{"frame": 2, "box": BOX}])],
                      ["b", "s3://b/b.mp4", "", json.dumps([{"frame": 0, "box": [1, 1, 0, 4]}]), ""],
                      ["c", "s3://b/c.mp4", "", "[not json", ""]])
    result = parse_manifest(table.getvalue().encode(), "m.csv")
    assert [i.id for i in result.items] == ["a"] and result.items[0].objects[0].labels == [1, 0]
    assert result.items[0].exemplars[0].box == (10.0, 20.0, 100.0, 80.0)
    assert [(r.line, r.reason.split(":")[0]) for r in result.rejected] == [(3, "objects[0].box"), (4, "objects")]
    assert "not valid JSON" in result.rejected[1].reason


@pytest.mark.parametrize("line, reason", [
    ({"objects": [{"frame": 0, "points": [[1, 2]], "labels": [3]}]}, "objects[0].labels[0]: 3 is not a point label"),
    ({"objects": [{"frame": 0, "box": [5, 5, 10, 0]}]}, "objects[0].box: [5, 5, 10, 0]: zero area"),
    ({"objects": [{"id": 2, "frame": 7, "box": BOX}, {"id": 2, "frame": 7, "box": BOX}]},
     "objects[1].id: object 2 is already given on frame 7 (objects[0])"),
    ({"objects": [{"id": i, "frame": 0, "box": BOX} for i in range(3)], "prompt": "dog"},
     "objects: 3 objects and 1 text prompt, at most 3 per video"),
    ({"exemplars": [{"frame": 0, "box": BOX}] * 4, "prompt": "dog"}, "exemplars: 4 exemplars, at most 3"),
    ({"exemplars": [{"frame": 0, "box": BOX}]}, f"exemplars: {NEEDS_TEXT}prompt (or the job's --prompt) too"),
    ({"exemplars": [{"frame": 0, "box": BOX}], "objects": [{"frame": 0, "box": BOX}], "prompt": " "},
     f"exemplars: {NEEDS_TEXT}"),
    ({"objects": {"frame": 0, "box": BOX}}, "objects: must be a JSON array"),
    ({"objects": [{"frame": 0}]}, "objects[0]: give points, a box or a mask"),
    ({"objects": []}, "prompt: missing"),  # an empty list prompts nothing
])
def test_manifest_rejects_the_line_with_its_reason_and_keeps_the_rest(line, reason):
    good = {"id": "good", "video": "s3://b/good.mp4", "prompt": "dog", "objects": [{"frame": 0, "box": BOX}]}
    text = "\n".join(json.dumps(x) for x in (good, {"id": "bad", "video": "s3://b/bad.mp4", **line}, {**good, "id": "next"}))
    result = parse_manifest(text.encode(), "m.jsonl", max_prompts=3)
    assert [i.id for i in result.items] == ["good", "next"]
    assert len(result.rejected) == 1 and result.rejected[0].line == 2
    assert result.rejected[0].reason.startswith(reason), result.rejected[0].reason


@pytest.mark.parametrize("default", [None, "cat"])
def test_manifest_exemplars_take_the_jobs_default_prompt_and_objects_alone_do_not(default):
    """Exemplars sharpen a text concept: a line with them and no prompt takes the job's default
    (with or without objects); with no default it is rejected, the other lines run. Objects alone
    need no text, so the default is not theirs."""
    ex, obj = [{"frame": 3, "box": BOX}], [{"id": 2, "frame": 0, "box": BOX}]
    lines = [{"id": "ex", "video": "s3://b/1.mp4", "exemplars": ex},
             {"id": "obj", "video": "s3://b/2.mp4", "objects": obj},
             {"id": "both", "video": "s3://b/3.mp4", "objects": obj, "exemplars": ex},
             {"id": "own", "video": "s3://b/4.mp4", "prompt": "dog", "exemplars": ex},
             {"id": "text", "video": "s3://b/5.mp4", "prompt": "dog"}]
    result = parse_manifest("\n".join(json.dumps(x) for x in lines).encode(), "m.jsonl", default_prompt=default)
    got = {i.id: i.prompts for i in result.items}
    if default is None:
        assert got == {"obj": [], "own": ["dog"], "text": ["dog"]}
        assert [r.line for r in result.rejected] == [1, 3]
        for r in result.rejected:
            assert r.reason.startswith(f"exemplars: {NEEDS_TEXT}") and BOX_ONLY in r.reason, r.reason
    else:
        assert got == {"ex": ["cat"], "obj": [], "both": ["cat"], "own": ["dog"], "text": ["dog"]}
        assert not result.rejected
        assert [len(i.exemplars) for i in result.items] == [1, 0, 1, 1, 0]


def test_manifest_mask_prompts_have_their_own_budget():
    rng = np.random.default_rng(1)
    noisy = rle_of(rng.random((360, 640)) > 0.5)  # a worst case: a run every two pixels
    assert MAX_MASK_BYTES // 3 < len(noisy["counts"]) < MAX_MASK_BYTES // 2
    line = {"video": "s3://b/a.mp4", "objects": [{"frame": f, "mask": noisy} for f in range(3)]}
    result = parse_manifest(json.dumps(line).encode(), "m.jsonl")
    assert result.rejected[0].reason.startswith("objects[2].mask: the mask prompts up to here hold")
    line["objects"] = line["objects"][:2]  # two fit: far more than the 32 KiB a line may hold besides
    assert parse_manifest(json.dumps(line).encode(), "m.jsonl").items


# --- sam3v segment -------------------------------------------------------------------------------

def segment(video, *flags, settings=None):
    # A model that does not exist: every refusal here comes before the model is looked at.
    return run("segment", video, "--out", "/nonexistent/out", "--model", "/nonexistent/model", "--device", "cpu",
               *flags, env=settings)


@pytest.mark.parametrize("flags, needles", [
    (["--point", "40:abc"], ["--point 40:abc", "X,Y"]),
    (["--point", "x:1,2"], ["--point x:1,2", "FRAME 'x'"]),
    (["--point", "0:1,2:5"], ["--point 0:1,2:5", "5 is not a point label"]),
    (["--point", "0:1,2:yes"], ["--point 0:1,2:yes", "LABEL"]),
    (["--point", "0:1,2@x"], ["--point 0:1,2@x", "@ID must be", "(expected FRAME:X,Y[:LABEL][@ID])"]),
    (["--box", "0:1,2,3"], ["--box 0:1,2,3", "X,Y,W,H"]),
    (["--box", "0:10,10,0,5"], ["--box 0:10,10,0,5", "zero area"]),
    (["--box", "0:10,10,5,5@1", "--box", "0:20,20,5,5@1"], ["--box 0:20,20,5,5@1", "already gives", "@ID"]),
    (["--mask", "0:/nonexistent/m.png"], ["--mask 0:/nonexistent/m.png", "no such file"]),
    (["--exemplar", "0:1,2,3,4:maybe"], ["--exemplar 0:1,2,3,4:maybe", "FRAME:X,Y,W,H[:neg]"]),
    # against the video (24 frames of 1280x720), after the probe, before the model
    (["--box", "24:10,10,50,50"], ["--box 24:10,10,50,50", "past the end of the video: it has 24 frames"]),
    (["--point", "3:10,10", "--start-frame", "5"], ["--point 3:10,10", "before start_frame 5"]),
    (["--point", "0:10,10", "--point", "0:1281,10"], ["--point 0:1281,10", "outside the 1280x720 frame"]),
    (["--box", "0:1200,10,100,10@2"], ["--box 0:1200,10,100,10@2", "outside the 1280x720 frame"]),
    (["--exemplar", "0:10,10,20,20", "--exemplar", "30:10,10,20,20:neg", "-p", "dog"],
     ["--exemplar 30:10,10,20,20:neg", "past the end"]),
    ([], ["--prompt", "at least one text prompt is required"]),
    # an exemplar sharpens a text prompt: without one, refused before the video is even probed
    (["--exemplar", "0:10,10,20,20"], [f"--exemplar: {NEEDS_TEXT}--prompt too", BOX_ONLY]),
    (["--exemplar", "0:10,10,20,20", "--box", "0:10,10,50,50"], [f"--exemplar: {NEEDS_TEXT}--prompt too"]),
])
def test_segment_refuses_bad_visual_flags_naming_the_flag(flags, needles, dog24):
    assert_user_error(segment(dog24, *flags), *needles)


def test_segment_refuses_a_mask_png_of_another_size_and_too_many_objects(dog24, tmp_path):
    Image.fromarray(blob(360, 640).astype(np.uint8) * 255).save(tmp_path / "half.png")
    assert_user_error(segment(dog24, "--mask", f"0:{tmp_path / 'half.png'}@1"),
                      f"--mask 0:{tmp_path / 'half.png'}@1", "[360, 640]", "[720, 1280]")
    done = segment(dog24, "-p", "dog", "--box", "0:10,10,50,50@1", "--point", "3:10,10@2",
                   settings={"SAM3V_MAX_PROMPTS": "2"})
    assert_user_error(done, "--point/--box/--mask: 2 objects and 1 text prompt, at most 2")


def test_segment_takes_good_visual_flags_up_to_the_model(dog24, tmp_path):
    """Box, negative click and PNG mask of one object (merged by FRAME and @ID), a refinement on a
    later frame, an exemplar: all pass entry; the next thing refused is the (missing) model."""
    Image.fromarray(blob(720, 1280).astype(np.uint8) * 255).save(tmp_path / "full.png")
    done = segment(dog24, "--box", "0:100,100,300,200@1", "--point", "0:150,150:0@1", "--point", "10:200,200@1",
                   "--mask", f"5:{tmp_path / 'full.png'}", "--exemplar", "0:0,0,1280,720", "-p", "dog")
    assert_user_error(done, "/nonexistent/model")
    assert "--point" not in done.stderr and "--box" not in done.stderr


def test_segment_help_explains_the_flags():
    done = run("segment", "--help", env={"COLUMNS": "200"})
    assert done.returncode == 0
    for text in ("--point", "FRAME:X,Y[:LABEL][@ID]", "--box", "FRAME:X,Y,W,H[@ID]", "--mask", "FRAME:FILE[@ID]",
                 "--exemplar", "FRAME:X,Y,W,H[:neg]", "0 excludes"):
        assert text in done.stdout, text


# --- HTTP API ------------------------------------------------------------------------------------

HOSTED = [  # the hosted documentation's request bodies, unchanged
    {"model": "sam-3-video", "input_video": "https://hub.oxen.ai/api/repos/ox/Oxen-AI-Assets/file/main/images/"
                                           "winter_summer_ox.mp4", "prompt": "the ox horns"},
    {"model": "sam-3-video", "input_video": "https://hub.oxen.ai/api/repos/ox/Oxen-AI-Assets/file/main/images/"
                                           "winter_summer_ox.mp4", "prompt": "the ox horns", "apply_mask": True},
]


def test_hosted_requests_still_validate_and_the_schema_says_prompt_or_a_visual_prompt():
    schema = request_schema()
    for body in HOSTED:
        assert GenerationRequest.model_validate(body).all_prompts() == ["the ox horns"]
        assert GenerateRequest.model_validate(body).objects is None
        jsonschema.validate(body, schema)
    box_only = {"input_video": "s3://b/inputs/a.mp4", "objects": [{"frame": 0, "box": BOX}]}
    jsonschema.validate(box_only, schema)
    assert GenerationRequest.model_validate(box_only).manifest_line()["objects"] == [{"frame": 0, "box": (10.0, 20.0, 100.0, 80.0)}]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"input_video": "s3://b/inputs/a.mp4"}, schema)
    # exemplars sharpen prompt: the schema needs it beside them, objects or not (an empty list asks nothing)
    ex = [{"frame": 0, "box": BOX}]
    for body in ({"input_video": "s3://b/inputs/a.mp4", "exemplars": ex}, {**box_only, "exemplars": ex},
                 {**box_only, "prompts": ["dog"], "exemplars": ex}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body, schema)
        with pytest.raises(ValidationError) as err:
            GenerationRequest.model_validate(body)
        assert err.value.errors()[0]["loc"] == ("exemplars",)
    for body in ({**HOSTED[0], "exemplars": ex}, {**box_only, "exemplars": []}, {**box_only, "exemplars": None}):
        jsonschema.validate(body, schema)
        GenerationRequest.model_validate(body)
    assert "need" in schema["properties"]["exemplars"]["description"]
    with pytest.raises(jsonschema.ValidationError):  # the schema carries the entries' own bounds
        jsonschema.validate({**box_only, "objects": [{"frame": -1, "box": BOX}]}, schema)


@pytest.mark.parametrize("extra, field", [
    ({"objects": [{"frame": 0, "points": [[1, 2]], "labels": [2]}]}, "objects.0.labels.0"),
    ({"objects": [{"frame": 0, "box": [1, 1, 0, 3]}]}, "objects.0.box"),
    ({"objects": [{"frame": 0}]}, "objects.0"),
    ({"objects": [{"id": 1, "frame": 2, "box": BOX}, {"id": 1, "frame": 2, "box": BOX}]}, "objects.1.id"),
    ({"objects": [{"frame": 0, "mask": {"size": [4, 4], "counts": "05"}}]}, "objects.0.mask.counts"),
    ({"exemplars": [{"frame": 0, "box": [1, 1, 3, 0]}]}, "exemplars.0.box"),
    ({"prompt": None, "objects": []}, "prompt"),
    ({"objects": [{"id": i, "frame": 0, "box": BOX} for i in range(16)]}, "objects"),  # 1 prompt + 16 > 16
])
def test_api_refuses_bad_visual_prompts_with_422_naming_the_field(api, extra, field):  # noqa: F811
    body = {"model": "sam-3-video", "input_video": f"s3://{BUCKET}/inputs/k.mp4", "prompt": "dog", **extra}
    r = httpx.post(f"{api['base']}/api/ai/queue", json=body, headers=A)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field, r.json()


@pytest.mark.parametrize("extra", [{}, {"objects": [{"frame": 0, "box": BOX}]}, {"prompts": ["dog"]}])
def test_api_refuses_exemplars_without_prompt_with_422_naming_exemplars(api, extra):  # noqa: F811
    body = {"model": "sam-3-video", "input_video": f"s3://{BUCKET}/inputs/k.mp4",
            "exemplars": [{"frame": 0, "box": BOX}], **extra}
    r = httpx.post(f"{api['base']}/api/ai/queue", json=body, headers=A)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "exemplars" and f"{NEEDS_TEXT}prompt too" in error["message"], error
    assert BOX_ONLY in error["message"]


def test_api_schema_lists_the_visual_fields(api):  # noqa: F811
    schema = httpx.get(f"{api['base']}/api/ai/models/sam-3-video", headers=A).json()["json_request_schema"]
    assert {"objects", "exemplars", "prompt"} <= set(schema["properties"])
    assert schema["required"] == ["input_video"]
    assert schema["anyOf"] == [{"required": ["prompt"]}, {"required": ["objects"]}]  # not exemplars alone
    assert schema["then"] == {"required": ["prompt"]} and schema["if"]["required"] == ["exemplars"]
    assert {"frame", "points", "labels", "box", "mask", "id"} <= set(schema["$defs"]["ObjectPrompt"]["properties"])


def test_api_frame_beyond_the_video_fails_it_at_the_probe(api, inputs):  # noqa: F811
    """clip.mp4 has 8 frames: a box on frame 50 is taken at enqueue (no video yet), and the probe
    task fails the generation with the field and the frame count, before any chunk."""
    gen = enqueue(api, {"input_video": f"{inputs['base']}/clip.mp4", "objects": [{"id": 3, "frame": 50, "box": BOX}]})
    doc = wait(api, gen)
    assert doc["status"] == "failed", doc
    assert "objects[0].frame: frame 50 is past the end of the video: it has 8 frames" in doc["error_message"], doc
    assert doc["prompt"] is None and doc["params"]["objects"][0]["frame"] == 50


# --- a job: one video's bad visual prompt affects no other ---------------------------------------

def test_job_fails_only_the_video_whose_prompt_the_video_cannot_hold(media_dir, tiny_model_dir, tmp_path):
    """`sam3v run` (in-process broker and worker): line 2's box lies on frame 30 of a 10-frame clip,
    line 3's entry has a label 2. The probe task fails line 2 with the field; line 3 is rejected at
    submit; line 1 (text) runs to the end."""
    clip = media.clip(media_dir, 10)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in (
        {"id": "dog", "video": str(clip), "max_frames": 4},
        {"id": "late", "video": str(clip), "objects": [{"frame": 30, "box": BOX}]},
        {"id": "label", "video": str(clip), "objects": [{"frame": 0, "points": [[1, 1]], "labels": [2]}]},
    )) + "\n")
    plain = {k: v for k, v in os.environ.items() if not k.startswith("SAM3V_")}
    done = subprocess.run([sys.executable, "-m", "sam3v.cli", "run", str(manifest), "--out", str(tmp_path / "out"),
                           "--prompt", "dog", "--model", str(tiny_model_dir)],
                          env=plain, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 1, done.stderr  # not every video succeeded
    job = done.stdout.strip().splitlines()[-1]
    results = {r["line"]: r for r in map(json.loads, (tmp_path / "out" / job / "results.jsonl").read_text().splitlines())}
    assert results[1]["state"] == "succeeded" and results[1]["frames"] == 4, results
    assert results[2]["state"] == "failed" and results[2]["frames"] == 0, results
    assert "objects[0].frame: frame 30 is past the end of the video: it has 10 frames" in results[2]["error"]
    assert results[3]["state"] == "rejected" and results[3]["error"].startswith("objects[0].labels[0]: 2 is not")


def test_a_stored_request_that_is_no_longer_valid_fails_its_video_saying_why():
    """A request stored before exemplars needed a text prompt: its task fails the video with the
    field and the reason (an InputError), not an internal error."""
    from types import SimpleNamespace

    from pipeline.core.errors import InputError
    from workers.jobs import tasks

    stored = {"id": "v", "video": "clip.mp4", "exemplars": [{"frame": 0, "box": [1.0, 1.0, 2.0, 2.0]}]}
    ctx = SimpleNamespace(status=SimpleNamespace(item=lambda job_id, video_id: stored))
    with pytest.raises(InputError, match=r"^exemplars: an exemplar sharpens a text prompt"):
        tasks._spec(ctx, "job", "video")
