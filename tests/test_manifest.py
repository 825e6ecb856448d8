"""Manifest parsing: every bad line is reported with its number and a reason naming the field."""

from __future__ import annotations

import json

import pytest

from pipeline.core.errors import InputError
from pipeline.control.manifest import load_manifest_bytes, manifest_digest, parse_manifest


def jsonl(*lines) -> bytes:
    return "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines).encode()


def test_jsonl_good_and_bad_lines():
    data = jsonl(
        {"video": "s3://bucket/a.mp4"},
        {"id": "b", "input_video": "https://example.com/v/b.mp4", "prompts": ["ox", "horn"], "outputs": ["mask"],
         "apply_mask": False, "max_frames": 12, "chunk_frames": 6, "mask_opacity": 0.25, "start_frame": 30,
         "detection_threshold": 0.35},
        {"video": "s3://bucket/c.mp4", "max_frames": "many"},
        "not json",
        {"video": "ftp://x/y.mp4"},
        {"id": "../up", "video": "s3://bucket/d.mp4"},
        {"video": "s3://bucket/e.mp4", "colour": "red"},
        {"id": "b", "video": "s3://bucket/f.mp4"},
        "",
        {"video": "/local/file.mp4"},
        {"prompt": "dog"},
        {"video": "s3://bucket/g.mp4", "mask_opacity": 2},
        {"video": "s3://bucket/h.mp4", "outputs": ["overlay", "gif"]},
        {"video": "s3://bucket/i.mp4", "apply_mask": "sometimes"},
        {"video": "file:///tmp/x.mp4"},
        "[1, 2]",
        {"video": "s3://bucket-only"},
        {"video": "s3://bucket/j.mp4", "id": 7},
        {"video": "s3://bucket/k.mp4", "chunk_frames": 0},
        {"video": "s3://bucket/l.mp4", "prompts": ["dog", " "]},
        {"video": "s3://a/1.mp4", "input_video": "s3://a/2.mp4"},
    )
    result = parse_manifest(data, "m.jsonl", default_prompt="dog")
    assert [i.id for i in result.items] == ["000001-a", "b"]
    first, second = result.items
    assert (first.video, first.prompts, first.apply_mask, first.outputs, first.line) == (
        "s3://bucket/a.mp4", ["dog"], True, None, 1)
    assert (first.start_frame, first.detection_threshold) == (0, None)
    assert second.model_dump() == {
        "id": "b", "video": "https://example.com/v/b.mp4", "prompts": ["ox", "horn"], "apply_mask": False,
        "outputs": ["mask"], "max_frames": 12, "chunk_frames": 6, "mask_opacity": 0.25, "start_frame": 30,
        "detection_threshold": 0.35, "overlay_style": "fill", "labels": False, "line": 2, "objects": [],
        "exemplars": []}
    reasons = {r.line: r.reason for r in result.rejected}
    assert sorted(reasons) == [3, 4, 5, 6, 7, 8, *range(10, 22)], "blank line 9 is skipped"
    expected = {3: "max_frames", 4: "JSON", 5: "'ftp'", 6: "id:", 7: "'colour'", 8: "repeats line 2",
                10: "embedded", 11: "video: missing", 12: "mask_opacity", 13: "'gif'", 14: "apply_mask",
                15: "file://", 16: "not a JSON object", 17: "s3://bucket/key", 18: "id: must be a string",
                19: "chunk_frames", 20: "prompts", 21: "not both"}
    for line, words in expected.items():
        assert words in reasons[line], (line, reasons[line])


def test_start_frame_and_detection_threshold():
    data = jsonl({"video": "s3://b/1.mp4", "start_frame": 0, "detection_threshold": 0},
                 {"video": "s3://b/2.mp4", "start_frame": "12", "detection_threshold": 1},
                 {"video": "s3://b/3.mp4", "start_frame": None, "detection_threshold": None},
                 {"video": "s3://b/4.mp4", "start_frame": -1},
                 {"video": "s3://b/5.mp4", "start_frame": 2.5},
                 {"video": "s3://b/6.mp4", "start_frame": True},
                 {"video": "s3://b/7.mp4", "start_frame": "first"},
                 {"video": "s3://b/8.mp4", "detection_threshold": 1.01},
                 {"video": "s3://b/9.mp4", "detection_threshold": -0.1},
                 {"video": "s3://b/10.mp4", "detection_threshold": "high"},
                 {"video": "s3://b/11.mp4", "detection_threshold": False},
                 '{"video": "s3://b/12.mp4", "detection_threshold": NaN}')
    result = parse_manifest(data, "m.jsonl", "dog")
    assert [(i.line, i.start_frame, i.detection_threshold) for i in result.items] == [
        (1, 0, 0.0), (2, 12, 1.0), (3, 0, None)]
    reasons = {r.line: r.reason for r in result.rejected}
    assert sorted(reasons) == list(range(4, 13))
    for line in range(4, 8):
        assert reasons[line].startswith("start_frame:"), reasons[line]
    for line in range(8, 13):
        assert reasons[line].startswith("detection_threshold:"), reasons[line]
    assert "0 or more" in reasons[4] and "integer" in reasons[5] and "true or false" in reasons[6]
    assert "between 0 and 1" in reasons[8] and "between 0 and 1" in reasons[12]

    csv = parse_manifest(b"video,start_frame,detection_threshold\ns3://b/a.mp4,7,0.4\ns3://b/b.mp4,,\n"
                         b"s3://b/c.mp4,-3,\ns3://b/d.mp4,,2\n", "m.csv", "dog")
    assert [(i.start_frame, i.detection_threshold) for i in csv.items] == [(7, 0.4), (0, None)]
    assert [(r.line, r.reason.split(":")[0]) for r in csv.rejected] == [(4, "start_frame"), (5, "detection_threshold")]


def test_prompts_and_the_job_default():
    data = jsonl({"video": "s3://b/1.mp4", "prompt": "   "}, {"video": "s3://b/2.mp4", "prompt": " cat "},
                 {"video": "s3://b/3.mp4"}, {"video": "s3://b/4.mp4", "prompts": []},
                 {"video": "s3://b/5.mp4", "prompt": 5})
    with_default = parse_manifest(data, "m.jsonl", default_prompt="dog")
    assert [i.prompts for i in with_default.items] == [["dog"], ["cat"], ["dog"], ["dog"]]
    assert [(r.line, "prompt" in r.reason) for r in with_default.rejected] == [(5, True)]
    without = parse_manifest(data, "m.jsonl")
    assert [i.line for i in without.items] == [2]
    assert all("prompt" in r.reason for r in without.rejected)
    with pytest.raises(InputError, match="prompt"):
        parse_manifest(data, "m.jsonl", default_prompt="  ")


def test_local_paths_only_in_embedded_mode():
    data = jsonl({"video": "clips/a.mp4"}, {"video": "file:///data/b%20c.mp4"})
    embedded = parse_manifest(data, "m.jsonl", "dog", allow_local=True)
    assert [i.video for i in embedded.items] == ["clips/a.mp4", "/data/b c.mp4"]
    assert [i.id for i in embedded.items] == ["000001-a", "000002-b-c"]
    remote = parse_manifest(data, "m.jsonl", "dog", allow_local=False)
    assert [(r.line, "embedded" in r.reason) for r in remote.rejected] == [(1, True), (2, True)]


def test_default_ids_are_safe_and_unique():
    data = jsonl({"video": "https://h/a/../%2e%2e/My Video (final).MP4?sig=1"}, {"video": "s3://b/x/.mp4"},
                 {"video": "https://h/" + "v" * 200 + ".mp4"}, {"video": "s3://b/clip.mp4"},
                 {"video": "s3://c/clip.mp4"})
    ids = [i.id for i in parse_manifest(data, "m.jsonl", "dog").items]
    assert len(set(ids)) == 5
    assert ids[0].startswith("000001-") and ids[3:] == ["000004-clip", "000005-clip"]
    assert len(ids[2]) == len("000003-") + 40
    from pipeline.control.manifest import _ID

    assert all(_ID.fullmatch(i) and ".." not in i.split("/") for i in ids)


def test_csv_with_header():
    data = (b"video,prompt,max_frames,apply_mask,outputs,mask_opacity\n"
            b"s3://b/a.mp4,dog,10,false,\"overlay,mask\",0.3\n"
            b"s3://b/c.mp4,,x,true,,\n"
            b"\n"
            b"s3://b/d.mp4,cat,,1,overlay|rle,\n"
            b"s3://b/e.mp4,cat,,maybe,,\n"
            b"s3://b/f.mp4,cat,,,,,extra\n"
            b",cat,,,,\n")
    result = parse_manifest(data, "m.csv")
    a, d = result.items
    assert (a.max_frames, a.apply_mask, a.outputs, a.prompts, a.mask_opacity, a.line) == (
        10, False, ["overlay", "mask"], ["dog"], 0.3, 2)
    assert (d.apply_mask, d.outputs, d.line) == (True, ["overlay", "rle"], 5)
    reasons = {r.line: r.reason for r in result.rejected}
    assert sorted(reasons) == [3, 6, 7, 8]
    assert "prompt" in reasons[3]  # no prompt and no job default: reported before max_frames
    assert "apply_mask" in reasons[6] and "more cells" in reasons[7] and "video" in reasons[8]


def test_csv_unknown_column_and_input_video_alias():
    bad = parse_manifest(b"video,colour\ns3://b/a.mp4,red\n", "m.csv", "dog")
    assert not bad.items and bad.rejected[0].line == 2 and "'colour'" in bad.rejected[0].reason
    good = parse_manifest(b"id,input_video,prompts\nx1,s3://b/a.mp4,dog|cat\n", "m.csv")
    assert good.items[0].model_dump(include={"id", "video", "prompts"}) == {
        "id": "x1", "video": "s3://b/a.mp4", "prompts": ["dog", "cat"]}


def test_format_detected_by_extension_or_content():
    line = b'{"video": "s3://b/a.mp4"}\n'
    assert len(parse_manifest(b"\n  " + line, "-", "dog").items) == 1  # first non-blank char is {
    assert len(parse_manifest(b"video\ns3://b/a.mp4\n", "-", "dog").items) == 1  # otherwise CSV
    assert len(parse_manifest(line, "m.json", "dog").items) == 1
    assert parse_manifest(b"video\ns3://b/a.mp4\n", "m.jsonl", "dog").rejected[0].line == 1
    assert parse_manifest(b"\xef\xbb\xbf" + line, "m.jsonl", "dog").items[0].line == 1  # BOM
    assert parse_manifest(b"", "m.jsonl", "dog").items == []
    with pytest.raises(InputError, match="UTF-8"):
        parse_manifest(b"\xff\xfe\x00", "m.jsonl", "dog")


def test_ten_thousand_lines_and_digest_stable():
    # How fast: benchmarks/bench_limits.py (against json.loads of the same lines).
    data = "".join(json.dumps({"video": f"s3://b/{i}.mp4"}) + "\n" for i in range(10_000)).encode()
    result = parse_manifest(data, "big.jsonl", "dog")
    assert len(result.items) == 10_000 and len({i.id for i in result.items}) == 10_000
    assert manifest_digest(data) == manifest_digest(bytes(data)) != manifest_digest(data + b"\n")
    assert manifest_digest(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_load_manifest_bytes(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b"x")
    assert load_manifest_bytes(str(path)) == b"x"
    with pytest.raises(InputError, match="no such manifest"):
        load_manifest_bytes(str(tmp_path / "missing.jsonl"))

    class Fake:
        def __init__(self, bucket):
            self.bucket = bucket

        def get_bytes(self, key):
            if key != "dir/m.csv":
                raise KeyError(key)
            return f"{self.bucket}:{key}".encode()

    assert load_manifest_bytes("s3://bkt/dir/m.csv", Fake) == b"bkt:dir/m.csv"
    with pytest.raises(InputError, match="cannot read manifest"):
        load_manifest_bytes("s3://bkt/other.csv", Fake)
    with pytest.raises(InputError, match="bucket/key"):
        load_manifest_bytes("s3://bkt", Fake)


@pytest.mark.parametrize("vid", ["results.jsonl", "status.json", "Status.json", "status.json.partial", "work",
                                 "uploads"])
def test_an_id_the_job_folder_uses_itself_is_rejected(vid):
    """A video named results.jsonl or status.json would be a folder where the job's index or an
    embedded run's status file goes (`sam3v run` failed with IsADirectoryError, its status unwritten)."""
    data = jsonl({"id": vid, "video": "s3://b/a.mp4", "prompt": "dog"}, {"id": "ok", "video": "s3://b/b.mp4", "prompt": "dog"})
    result = parse_manifest(data, "m.jsonl")
    assert [i.id for i in result.items] == ["ok"]
    assert result.rejected[0].line == 1 and repr(vid) in result.rejected[0].reason
    assert "a name the job's folder uses itself" in result.rejected[0].reason


@pytest.mark.parametrize("vid", ["dog\n", "dog\r", "\ndog", "do\ng", "dog ", "a/b", "..", "-dog", "x" * 129])
def test_an_id_is_checked_whole(vid):
    """"$" matched before a trailing newline: "dog\n" passed and became a folder named with a newline."""
    result = parse_manifest(jsonl({"id": vid, "video": "s3://b/a.mp4", "prompt": "dog"}), "m.jsonl")
    assert not result.items and result.rejected[0].reason.startswith(f"id: {vid!r} is not safe")


def test_prompt_count_is_bounded():
    """Each prompt costs model time on every frame: a line with more than max_prompts is rejected,
    naming the field and the limit; lines at the limit, and the job's default prompt, pass."""
    many = [f"thing {i}" for i in range(17)]
    data = jsonl({"video": "s3://b/1.mp4", "prompts": many[:16]}, {"video": "s3://b/2.mp4", "prompts": many},
                 {"video": "s3://b/3.mp4", "prompts": "|".join(many)}, {"video": "s3://b/4.mp4"})
    result = parse_manifest(data, "m.jsonl", "dog")
    assert [(i.line, len(i.prompts)) for i in result.items] == [(1, 16), (4, 1)]
    assert [(r.line, r.reason) for r in result.rejected] == [
        (2, "prompts: 17 prompts, at most 16 per video (SAM3V_MAX_PROMPTS)"),
        (3, "prompts: 17 prompts, at most 16 per video (SAM3V_MAX_PROMPTS)")]
    lowered = parse_manifest(data, "m.jsonl", "dog", max_prompts=2)
    assert [i.line for i in lowered.items] == [4]
    assert "at most 2 per video" in lowered.rejected[0].reason
    csv = parse_manifest(b"video,prompts\ns3://b/a.mp4,a|b\ns3://b/b.mp4,a|b|c\n", "m.csv", max_prompts=2)
    assert [i.line for i in csv.items] == [2] and csv.rejected[0].reason.startswith("prompts: 3 prompts")
