"""Manifest parsing: every bad line is reported with its number and a reason naming the field."""

from __future__ import annotations

import json
import time

from pipeline.manifest import manifest_digest, parse_manifest


def test_jsonl_good_and_bad_lines():
    lines = [
        {"video": "s3://bucket/a.mp4"},
        {"id": "b", "input_video": "https://example.com/v/b.mp4", "prompts": ["ox", "horn"], "outputs": ["mask"]},
        {"video": "s3://bucket/c.mp4", "max_frames": "many"},
        "not json",
        {"video": "ftp://x/y.mp4"},
        {"id": "../up", "video": "s3://bucket/d.mp4"},
        {"video": "s3://bucket/e.mp4", "colour": "red"},
        {"id": "b", "video": "s3://bucket/f.mp4"},
        {"video": "s3://bucket/g.mp4", "prompt": "   "},
        {"video": "/local/file.mp4"},
    ]
    data = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode()
    result = parse_manifest(data, "m.jsonl", default_prompt="dog")
    assert [i.id for i in result.items] == ["000001-a", "b"]
    assert result.items[1].prompts == ["ox", "horn"] and result.items[1].outputs == ["mask"]
    reasons = {r.line: r.reason for r in result.rejected}
    assert set(reasons) == {3, 4, 5, 6, 7, 8, 9, 10}
    assert "max_frames" in reasons[3] and "JSON" in reasons[4] and "ftp" in reasons[5]
    assert "id" in reasons[6] and "colour" in reasons[7] and "repeats line 2" in reasons[8]
    assert "prompt" in reasons[9] and "embedded" in reasons[10]


def test_local_paths_only_in_embedded_mode():
    data = b'{"video": "clips/a.mp4"}\n'
    assert parse_manifest(data, "m.jsonl", "dog", allow_local=True).items[0].video == "clips/a.mp4"
    assert parse_manifest(data, "m.jsonl", "dog", allow_local=False).rejected[0].line == 1


def test_csv_with_header():
    data = b"video,prompt,max_frames,apply_mask,outputs\ns3://b/a.mp4,dog,10,false,\"overlay,mask\"\ns3://b/c.mp4,,x,true,\n"
    result = parse_manifest(data, "m.csv")
    item = result.items[0]
    assert (item.max_frames, item.apply_mask, item.outputs, item.prompts) == (10, False, ["overlay", "mask"], ["dog"])
    assert [r.line for r in result.rejected] == [3]


def test_ten_thousand_lines_fast_and_digest_stable():
    data = "".join(json.dumps({"video": f"s3://b/{i}.mp4"}) + "\n" for i in range(10_000)).encode()
    start = time.perf_counter()
    result = parse_manifest(data, "big.jsonl", "dog")
    assert time.perf_counter() - start < 2.0
    assert len(result.items) == 10_000 and len({i.id for i in result.items}) == 10_000
    assert manifest_digest(data) == manifest_digest(bytes(data)) != manifest_digest(data + b"\n")
