"""A real clip made corrupt in the middle (one video packet overwritten, in a copy under tmp_path):
read in one piece it is decoded past, as the ffmpeg CLI does; read by a chunk of a video split into
several, it fails naming the frame (decoding past it would number the later frames differently in
each chunk, and the video's finalize could not join them)."""

from __future__ import annotations

import pytest

from pipeline.core.planning import plan_chunks
from tests import media
from workers.chunks.chunk_runner import ChunkInputs
from workers.media.decode import DamagedSource, open_reader
from workers.media.probe import probe

DAMAGED = 3  # the packet (and, without B-frames, the frame) overwritten


@pytest.fixture(scope="module")
def damaged(media_dir, tmp_path_factory):
    return media.damaged_copy(media.clip(media_dir, 24), tmp_path_factory.mktemp("damaged") / "damaged.mp4", DAMAGED)


def test_read_in_one_piece_it_is_decoded_past(damaged):
    with open_reader(probe(str(damaged)), 0, 8) as reader:
        frames = list(reader)
    assert len(frames) == 8 and "damaged packet skipped" in reader.warning


def test_a_chunk_of_a_split_video_fails_at_the_damage_naming_the_frame(damaged):
    info = probe(str(damaged))
    with pytest.raises(DamagedSource, match=rf"{damaged}: damaged data at frame {DAMAGED} .*one chunk"):
        with open_reader(info, 0, 8, strict=True) as reader:
            list(reader)
    for chunks, strict in ((plan_chunks(24, 8), [True, True, True]), (plan_chunks(24, 24), [False])):
        assert [ChunkInputs(info, c, 24, ["dog"], ["overlay"]).damaged_is_error for c in chunks] == strict
