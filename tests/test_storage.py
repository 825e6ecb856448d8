"""Storage backends: S3Storage against a real moto server process on 127.0.0.1, and LocalStorage
held to the same contract; then what is S3-specific (multipart uploads, prefixes, presigned URLs,
open_storage reading the standard AWS variables)."""

from __future__ import annotations

import os

import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from moto.server import ThreadedMotoServer

from pipeline.core.storage import LocalStorage, MissingKey, Storage, open_storage
from pipeline.core.storage.s3 import S3Storage

MiB = 1024 * 1024
BUCKET = "sam3v-test"


@pytest.fixture(scope="module")
def moto_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def client(moto_endpoint):
    c = boto3.client("s3", endpoint_url=moto_endpoint, aws_access_key_id="testing",
                     aws_secret_access_key="testing", region_name="us-east-1")
    c.create_bucket(Bucket=BUCKET)
    return c


@pytest.fixture(params=["s3", "local"])
def storage(request, client, tmp_path) -> Storage:
    if request.param == "s3":
        small = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
        return S3Storage(BUCKET, f"t/{request.node.name}/", client=client, transfer=small)
    return LocalStorage(tmp_path / "root")


def test_put_get_exists_list_delete(storage, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(11 * MiB))  # above the 5 MiB test threshold: multipart on S3
    assert storage.put_file(src, "job/v1/overlay.mp4") == storage.uri("job/v1/overlay.mp4")
    assert storage.put_bytes(b'{"a": 1}', "job/v1/masks.json") == storage.uri("job/v1/masks.json")
    storage.put_bytes(b"old", "job/v1/masks.json")  # overwrite: the last write wins
    storage.put_bytes(b"s", "job/v1/chunks/00000/state.pt")
    storage.put_bytes(b"t", "job/v10/other.json")  # shares the string prefix "job/v1", not the folder

    assert storage.exists("job/v1/masks.json") and not storage.exists("job/v1/missing.json")
    assert not storage.exists("job/v1")  # a folder is not a key
    assert storage.get_bytes("job/v1/masks.json") == b"old"
    back = storage.get_file("job/v1/overlay.mp4", tmp_path / "deep" / "back.bin")
    assert back == tmp_path / "deep" / "back.bin" and back.read_bytes() == src.read_bytes()
    assert [p.name for p in back.parent.iterdir()] == ["back.bin"], "no partial file left beside it"

    assert storage.list("job/v1") == storage.list("job/v1/") == [
        "job/v1/chunks/00000/state.pt", "job/v1/masks.json", "job/v1/overlay.mp4"]
    assert storage.list("nothing") == []
    assert len(storage.list("")) == 4
    assert storage.delete_prefix("job/v1/chunks") == 1
    assert storage.list("job/v1") == ["job/v1/masks.json", "job/v1/overlay.mp4"]
    assert storage.delete_prefix("job/v1") == 2 and storage.list("job") == ["job/v10/other.json"]
    assert storage.delete_prefix("") == 1 and storage.list("") == []

    for bad in ("../escape", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(ValueError):
            storage.put_bytes(b"x", bad)
    with pytest.raises(ValueError):
        storage.list("../..")


def test_missing_key_raises_and_leaves_nothing(storage, tmp_path):
    # One exception for both backends, naming the key's URI (a FileNotFoundError, as callers expect)
    with pytest.raises(MissingKey, match=r"no/such\.json: no such key") as missing:
        storage.get_bytes("no/such.json")
    assert isinstance(missing.value, FileNotFoundError) and storage.uri("no/such.json") in str(missing.value)
    with pytest.raises(MissingKey, match=r"no/such\.json: no such key"):
        storage.get_file("no/such.json", tmp_path / "out" / "x.json")
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_multipart_upload_and_key_layout(client, tmp_path):
    small = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    store = S3Storage(BUCKET, "/multi/part/", client=client, transfer=small)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(11 * MiB))
    assert store.put_file(src, "v/overlay.mp4") == f"s3://{BUCKET}/multi/part/v/overlay.mp4"
    head = client.head_object(Bucket=BUCKET, Key="multi/part/v/overlay.mp4")
    assert head["ETag"].strip('"').endswith("-3"), "uploaded in 3 parts"
    assert head["ContentLength"] == 11 * MiB
    default = S3Storage(BUCKET, "multi/part", client=client)  # 64 MiB threshold: one request
    default.put_file(src, "v/single.mp4")
    assert "-" not in client.head_object(Bucket=BUCKET, Key="multi/part/v/single.mp4")["ETag"]
    unprefixed = S3Storage(BUCKET, client=client)
    assert unprefixed.uri("a/b.json") == f"s3://{BUCKET}/a/b.json"
    assert "multi/part/v/overlay.mp4" in unprefixed.list("multi")


def test_presigned_url_serves_the_object(client, tmp_path):
    store = S3Storage(BUCKET, "urls", client=client)
    store.put_bytes(b"hello", "job/a.txt")
    url = store.url("job/a.txt", expires=60)
    assert url.startswith("http://127.0.0.1:") and "Signature=" in url
    assert httpx.get(url).content == b"hello"
    local = LocalStorage(tmp_path)
    local.put_bytes(b"hi", "job/a.txt")
    assert local.url("job/a.txt") == str(tmp_path.resolve() / "job" / "a.txt")


def test_open_storage_reads_the_standard_aws_variables(moto_endpoint, client, monkeypatch, tmp_path):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    store = open_storage(f"s3://{BUCKET}/from-env/")
    assert isinstance(store, S3Storage) and (store.bucket, store.prefix) == (BUCKET, "from-env")
    store.put_bytes(b"via env", "k.json")
    assert client.get_object(Bucket=BUCKET, Key="from-env/k.json")["Body"].read() == b"via env"
    assert isinstance(open_storage(str(tmp_path / "d")), LocalStorage)
    assert isinstance(open_storage(f"file://{tmp_path / 'e'}"), LocalStorage)
    with pytest.raises(ValueError, match="gs"):
        open_storage("gs://bucket/x")
