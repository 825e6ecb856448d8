"""Storage backends: S3 (a real moto server process on 127.0.0.1) and a local directory."""

from __future__ import annotations

import os

import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from moto.server import ThreadedMotoServer

from pipeline.storage import LocalStorage, open_storage
from pipeline.storage.s3 import S3Storage


@pytest.fixture(scope="module")
def s3_client():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    client = boto3.client("s3", endpoint_url=f"http://{host}:{port}", aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket="bucket-b")
    yield client
    server.stop()


@pytest.fixture(params=["s3", "local"])
def storage(request, s3_client, tmp_path):
    if request.param == "s3":
        small = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024)
        return S3Storage("bucket-b", f"p{os.getpid()}/{tmp_path.name}", client=s3_client, transfer=small)
    return LocalStorage(tmp_path / "root")


def test_round_trip_list_and_delete(storage, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(12 * 1024 * 1024))  # above the multipart threshold
    storage.put_file(big, "job/v/overlay.mp4")
    storage.put_bytes(b"{}", "job/v/masks.json")
    storage.put_bytes(b"s", "job/v/work/chunks/00000/done.json")
    assert storage.exists("job/v/masks.json") and not storage.exists("job/v/nope")
    assert storage.get_bytes("job/v/masks.json") == b"{}"
    assert storage.get_file("job/v/overlay.mp4", tmp_path / "back.bin").read_bytes() == big.read_bytes()
    assert sorted(storage.list("job/v")) == ["job/v/masks.json", "job/v/overlay.mp4",
                                             "job/v/work/chunks/00000/done.json"]
    storage.delete_prefix("job/v/work")
    assert sorted(storage.list("job")) == ["job/v/masks.json", "job/v/overlay.mp4"]
    with pytest.raises(ValueError):
        storage.put_bytes(b"x", "../escape")


def test_presigned_url_serves_the_object(s3_client):
    store = S3Storage("bucket-b", "urls", client=s3_client)
    store.put_bytes(b"hello", "a.txt")
    assert httpx.get(store.url("a.txt")).content == b"hello"
    assert store.uri("a.txt") == "s3://bucket-b/urls/a.txt"


def test_open_storage_picks_the_backend(tmp_path):
    assert isinstance(open_storage(str(tmp_path)), LocalStorage)
    assert isinstance(open_storage("s3://bucket/prefix"), S3Storage)
    with pytest.raises(ValueError, match="gs"):
        open_storage("gs://bucket")
