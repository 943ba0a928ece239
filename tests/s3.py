"""An S3-compatible server on loopback for the tests: moto's server mode, in this process.

Real HTTP and the real S3 protocol (what pyarrow's S3 client and boto3 speak to AWS or MinIO);
only the server is a stand-in. The cluster test (tests/e2e) runs it as a process of its own.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from service.server import free_port

#: Credentials moto accepts; set in the environment of every process that talks to it.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class S3Server:
    endpoint_url: str
    bucket: str

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under `prefix` in the bucket."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on a free loopback port with one fresh bucket; stopped on exit."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    for name, value in FAKE_AWS_ENV.items():
        os.environ.setdefault(name, value)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server(f"http://127.0.0.1:{port}", f"dab-test-{uuid.uuid4().hex[:8]}")
    try:
        s3.client().create_bucket(Bucket=s3.bucket)
        yield s3
    finally:
        server.stop()
