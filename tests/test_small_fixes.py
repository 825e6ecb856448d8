"""Issue 20's smaller items, each where it is decided: results.jsonl reports a stopped video's
frames done; a manifest's unknown column or field says what fixes it; masks.json names a local
model by its directory's name, not the server's path."""

from __future__ import annotations

import json

from pipeline.control.manifest import parse_manifest
from pipeline.core.results import results_jsonl


def _rejected(data: str, name: str) -> str:
    result = parse_manifest(data.encode(), name, default_prompt="dog")
    assert not result.items, result.items
    return result.rejected[0].reason


def test_a_cancelled_videos_results_line_reports_its_frames_done():
    doc = {"videos": [{"id": "dog", "line": 1, "video": "s3://b/dog.mp4", "status": "cancelled", "frames_done": 23},
                      {"id": "cat", "line": 2, "video": "s3://b/cat.mp4", "status": "succeeded", "frames_done": 40,
                       "num_frames": 40, "num_objects": 2}],
           "rejected": []}
    lines = [json.loads(x) for x in results_jsonl(doc).decode().splitlines()]
    assert [(r["id"], r["state"], r["frames"], r["objects"]) for r in lines] == [
        ("dog", "cancelled", 23, None), ("cat", "succeeded", 40, 2)]


def test_a_semicolon_separated_csv_is_told_about_its_delimiter():
    reason = _rejected("id;video;prompt\ndog;s3://b/dog.mp4;dog\n", "m.csv")
    assert "unknown column 'id;video;prompt'" in reason and "separated by ';'" in reason, reason
    assert "comma-separated" in reason


def test_a_mistyped_field_or_column_gets_did_you_mean():
    reason = _rejected(json.dumps({"vidoe": "s3://b/dog.mp4"}) + "\n", "m.jsonl")
    assert reason == "unknown field 'vidoe' (did you mean 'video'?)", reason
    reason = _rejected("video,promt\ns3://b/dog.mp4,dog\n", "m.csv")
    assert reason == "unknown column 'promt' (did you mean 'prompt'?)", reason
    reason = _rejected(json.dumps({"video": "s3://b/dog.mp4", "zzzz": 1}) + "\n", "m.jsonl")
    assert reason == "unknown field 'zzzz'", reason


def test_masks_json_names_a_local_model_by_its_directory_name_only():
    from workers.chunks.video_steps import public_model_id

    assert public_model_id("/srv/secret/models/sam3-ft") == "local:sam3-ft"
    assert public_model_id("facebook/sam3") == "facebook/sam3"
