"""Shared fixtures: a real S3 protocol server (moto) on loopback."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server on 127.0.0.1 (test credentials in the environment)."""
    from moto.server import ThreadedMotoServer

    old = {k: os.environ.get(k) for k in S3_ENV}
    os.environ.update(S3_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def s3_bucket(s3_endpoint, request):
    """A fresh bucket on the test server; yields (s3fs filesystem, bucket name)."""
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True)
    name = "t-" + request.node.name.lower().replace("_", "-").replace("[", "-").strip("]-")[:50]
    fs.mkdir(name)
    yield fs, name
    fs.rm(name, recursive=True)


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """One local Ray for the whole session (2 CPUs and no GPU, so that on a GPU machine too the
    actors run the CPU path that the tests compare with), started after the S3 test
    credentials are in the environment so that its workers get them."""
    import ray

    from pipelines.ray_env import init_ray

    # its own temp dir (short: unix socket paths), not Ray's machine-wide default, which
    # another Ray on the machine would share (it once took worker logs from under the tests)
    temp_dir = tempfile.mkdtemp(prefix="sd-", dir="/tmp")
    init_ray(None, num_cpus=2, num_gpus=0, temp_dir=temp_dir)
    yield ray
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)
