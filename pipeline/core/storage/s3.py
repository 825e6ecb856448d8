"""S3-compatible storage through boto3 (AWS, MinIO, R2, Ceph: AWS_ENDPOINT_URL or endpoint_url).

Files go up through boto3's transfer manager (multipart above the threshold); an S3 object
becomes visible only when its upload completes, so readers never see half a result.
"""

from __future__ import annotations

import functools
import uuid
from pathlib import Path

import boto3
from boto3.exceptions import RetriesExceededError, S3TransferFailedError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError, ConnectionError as BotoConnectionError, HTTPClientError

from pipeline.core.storage.base import MissingKey, Storage, StorageUnavailable, check_key

MiB = 1024 * 1024
_NOT_FOUND = ("404", "NoSuchKey", "NotFound")


def _not_found(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") in _NOT_FOUND


def _outage(err: BaseException) -> bool:
    """A connection that failed (refused, dropped, timed out), here or behind the transfer
    manager's wrapper, after botocore's own retries."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, BotoConnectionError | HTTPClientError):
            return True
        err, seen = getattr(err, "last_exception", None) or err.__cause__ or err.__context__, seen + 1
    return False


def _translated(method):
    """Outages become ``StorageUnavailable`` naming the bucket; every other error is unchanged."""

    @functools.wraps(method)
    def call(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (BotoConnectionError, HTTPClientError, RetriesExceededError, S3UploadFailedError,
                S3TransferFailedError) as err:
            if _outage(err):
                raise StorageUnavailable(f"s3://{self.bucket}: storage unreachable ({err})") from err
            raise

    return call


class S3Storage(Storage):
    presigns = True

    def __init__(self, bucket: str, prefix: str = "", client=None, endpoint_url: str | None = None,
                 transfer: TransferConfig | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)
        self.transfer = transfer or TransferConfig(multipart_threshold=64 * MiB, multipart_chunksize=64 * MiB)

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    @_translated
    def put_file(self, local_path: Path, key: str) -> str:
        self.client.upload_file(str(local_path), self.bucket, self._key(key), Config=self.transfer)
        return self.uri(key)

    @_translated
    def put_bytes(self, data: bytes, key: str) -> str:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return self.uri(key)

    @_translated
    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as err:
            if _not_found(err):
                raise MissingKey(self.uri(key)) from None
            raise

    @_translated
    def get_file(self, key: str, local_path: Path) -> Path:
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_path.with_name(f".{local_path.name}.{uuid.uuid4().hex}.partial")
        try:
            self.client.download_file(self.bucket, self._key(key), str(tmp), Config=self.transfer)
            tmp.replace(local_path)
        except ClientError as err:
            if _not_found(err):
                raise MissingKey(self.uri(key)) from None
            raise
        finally:
            tmp.unlink(missing_ok=True)
        return local_path

    @_translated
    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as err:
            if _not_found(err):
                return False
            raise

    @_translated
    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix.strip("/")) + "/" if prefix.strip("/") else (self.prefix + "/" if self.prefix else "")
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                keys.append(obj["Key"][len(self.prefix) + 1:] if self.prefix else obj["Key"])
        return keys

    @_translated
    def delete_prefix(self, prefix: str) -> int:
        keys = [self._key(k) for k in self.list(prefix)]
        for start in range(0, len(keys), 1000):
            self.client.delete_objects(Bucket=self.bucket,
                                       Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]]})
        return len(keys)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def url(self, key: str, expires: int = 3600) -> str:
        return self.client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
                                                  ExpiresIn=expires)
