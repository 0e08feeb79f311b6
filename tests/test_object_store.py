"""LitData streams on a real S3 store (SeaweedFS on loopback, plain HTTP, with keys): write, read, fail clearly, recover.

The server tests skip, with the reason, when SeaweedFS's ``weed`` is not installed.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import litdata
import numpy as np
import pytest
from object_store import SeaweedS3, seaweed_s3, skip_reason

from gem_lightning.compat.litdata import OBSTORE_S3_STORE_BUILDER, obstore_s3_store_builder
from gem_lightning.data import object_store
from gem_lightning.data.object_store import S3Settings, explain_s3_errors, storage_options
from gem_lightning.errors import UserInputError

ITEMS = 48
"""Items in the test stream, one per chunk: enough chunks that LitData's prefetch cannot have them all."""


def make_item(index: int) -> dict:
    """Item ``index``: a uint8 image whose pixels encode the index, and its label (module level: spawn workers import it)."""
    image = (np.arange(6 * 5 * 3, dtype=np.int64).reshape(6, 5, 3) * 7 + index * 13) % 256
    return {"image": image.astype(np.uint8), "label": index}


def settings_for(server: SeaweedS3, **changes: str) -> S3Settings:
    return replace(S3Settings(server.endpoint, server.access_key, server.secret_key, region=server.region), **changes)


def write_stream(url: str, settings: S3Settings | None = None) -> None:
    """``litdata.optimize`` ITEMS items to ``url`` in one spawned worker (which must get the http fix too)."""
    with explain_s3_errors(url, settings):
        litdata.optimize(fn=make_item, inputs=list(range(ITEMS)), output_dir=url, chunk_size=1, num_workers=1,
                         storage_options=storage_options(url, settings), verbose=False)  # fmt: skip


def open_loader(url: str, cache: Path, settings: S3Settings | None = None) -> litdata.StreamingDataLoader:
    with explain_s3_errors(url, settings):
        dataset = litdata.StreamingDataset(url, cache_dir=str(cache), storage_options=storage_options(url, settings))
    return litdata.StreamingDataLoader(dataset, batch_size=4, num_workers=0)


def read_all(loader: litdata.StreamingDataLoader, url: str, settings: S3Settings | None = None) -> list[tuple[np.ndarray, int]]:
    """Every (image, label) the loader yields, unbatched, in order."""
    items = []
    with explain_s3_errors(url, settings):
        for batch in loader:
            items += [(image.numpy(), int(label)) for image, label in zip(batch["image"], batch["label"])]
    return items


def read_all_lazily(loader: litdata.StreamingDataLoader, url: str, settings: S3Settings) -> Iterator[dict]:
    """The loader's batches, with S3 failures turned into :class:`UserInputError` as they happen."""
    with explain_s3_errors(url, settings):
        yield from loader


@pytest.fixture(scope="module")
def server() -> Iterator[SeaweedS3]:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    with seaweed_s3() as started:
        yield started


@pytest.fixture(scope="module")
def stream(server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test stream at ``s3://<bucket>/x``, written with only the standard AWS variables set.

    LitData's optimize caches chunks in a fixed ``/tmp/chunks`` unless told otherwise, and switches
    the whole process to the ``spawn`` start method: both are put back for the other tests.
    """
    cache = tmp_path_factory.mktemp("optimize-cache")
    start_method = multiprocessing.get_start_method(allow_none=True)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {**server.env(), "DATA_OPTIMIZER_CACHE_FOLDER": str(cache / "chunks"),
                            "DATA_OPTIMIZER_DATA_CACHE_FOLDER": str(cache / "data")}.items():  # fmt: skip
            patch.setenv(name, value)
        url = f"s3://{server.bucket}/x"
        write_stream(url)
        yield url
    multiprocessing.set_start_method(start_method, force=True)


def test_a_stream_written_to_s3_reads_back_equal_item_by_item(stream: str, tmp_path: Path):
    items = read_all(open_loader(stream, tmp_path), stream)
    assert [label for _, label in items] == list(range(ITEMS))
    for image, label in items:
        np.testing.assert_array_equal(image, make_item(label)["image"])


def test_a_wrong_secret_key_is_one_line_naming_the_credentials(server: SeaweedS3, stream: str, tmp_path: Path):
    wrong = settings_for(server, secret_access_key="not-the-secret")
    with pytest.raises(UserInputError, match="rejected the credentials") as writing:
        write_stream(f"s3://{server.bucket}/y", wrong)
    with pytest.raises(UserInputError, match="rejected the credentials") as reading:
        read_all(open_loader(stream, tmp_path, wrong), stream, wrong)
    for error in (writing.value, reading.value):
        assert "\n" not in str(error) and "access key and secret key" in str(error)


def test_a_missing_bucket_is_one_line_naming_the_bucket(server: SeaweedS3, stream: str, tmp_path: Path):
    settings = settings_for(server)
    with pytest.raises(UserInputError, match="bucket 'no-such-bucket' does not exist") as writing:
        write_stream("s3://no-such-bucket/x", settings)
    with pytest.raises(UserInputError, match="bucket 'no-such-bucket' does not exist") as reading:
        open_loader("s3://no-such-bucket/x", tmp_path, settings)
    assert "\n" not in str(writing.value) + str(reading.value)
    with pytest.raises(UserInputError, match=f"no LitData stream at s3://{server.bucket}/nothing"):
        open_loader(f"s3://{server.bucket}/nothing", tmp_path, settings)


def test_an_unreachable_endpoint_is_one_line_naming_it(server: SeaweedS3, stream: str, tmp_path: Path):
    settings = settings_for(server, endpoint_url="http://127.0.0.1:9")  # the discard port: nothing listens
    with pytest.raises(UserInputError, match=r"cannot reach the S3 endpoint http://127\.0\.0\.1:9 .*connection refused") as reading:
        open_loader(stream, tmp_path, settings)
    assert "\n" not in str(reading.value)


def test_a_store_stopped_mid_epoch_fails_clearly_and_reads_again_once_restarted(server: SeaweedS3, stream: str, tmp_path: Path):
    settings = settings_for(server)
    loader = open_loader(stream, tmp_path, settings)
    batches = 0
    try:
        with pytest.raises(UserInputError, match=f"cannot reach the S3 endpoint {server.endpoint} for {stream}"):
            for _ in read_all_lazily(loader, stream, settings):
                batches += 1
                if batches == 1:
                    server.stop()
        assert 1 <= batches < ITEMS // 4  # it failed mid-epoch, on a chunk not prefetched before the stop
    finally:
        server.start()
    items = read_all(loader, stream, settings)  # the same loader, next epoch
    assert [label for _, label in items] == list(range(ITEMS))


def test_small_text_files_round_trip_and_a_missing_one_is_none(server: SeaweedS3):
    settings = settings_for(server)
    object_store.write_text(f"s3://{server.bucket}/meta/info.json", '{"classes": ["a"]}', settings)
    assert object_store.read_text(f"s3://{server.bucket}/meta/info.json", settings) == '{"classes": ["a"]}'
    assert object_store.read_text(f"s3://{server.bucket}/meta/missing.json", settings) is None
    with pytest.raises(UserInputError, match="rejected the credentials"):
        object_store.read_text(f"s3://{server.bucket}/meta/info.json", settings_for(server, secret_access_key="wrong"))


def test_litdata_alone_still_refuses_plain_http(server: SeaweedS3):
    """The trap the shim exists for; when this fails, LitData accepts http:// itself and the shim can go."""
    import obstore
    from litdata.streaming.client import S3Client

    object_store.accept_plain_http_endpoints()
    shimmed_builder = obstore_s3_store_builder()
    litdata_builder = shimmed_builder.__wrapped__
    client = S3Client(storage_options=storage_options("s3://", settings_for(server)))
    with pytest.raises(Exception, match="builder error") as refused:
        obstore.put(litdata_builder(server.bucket, client), "probe", b"x")
    message = str(object_store.s3_user_error(refused.value, f"s3://{server.bucket}/probe", settings_for(server)))
    assert message.startswith("LitData refused the plain-http S3 endpoint")
    obstore.put(shimmed_builder(server.bucket, client), "probe", b"x")  # and with the shim it works


def test_the_shim_refuses_to_install_over_a_changed_litdata(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(OBSTORE_S3_STORE_BUILDER, lambda bucket, client, extra: None)
    with pytest.raises(RuntimeError, match=r"_build_obstore_s3_store\(bucket, s3_client\) is not in the installed LitData"):
        object_store.accept_plain_http_endpoints()


def test_https_stores_are_litdata_own(monkeypatch: pytest.MonkeyPatch):
    """Only http:// endpoints are rebuilt; AWS S3 (https) keeps exactly the store LitData built."""
    from obstore.store import S3Store

    built = S3Store("bucket", config={"endpoint": "https://s3.example.com", "region": "us-east-1"})
    wrapped = object_store._allowing_plain_http(lambda bucket, client: built)
    assert wrapped("bucket", None) is built
    plain = object_store._allowing_plain_http(lambda bucket, client: S3Store("b", config={"endpoint": "http://h:1"}))("b", None)
    assert plain.client_options["allow_http"] in (True, "true")


def test_storage_options_are_empty_for_local_paths_and_carry_the_fix_for_s3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import pickle

    assert storage_options(tmp_path) == {} and storage_options(str(tmp_path)) == {}
    options = storage_options("s3://bucket/x", S3Settings(endpoint_url="http://minio:9000", access_key_id="a", secret_access_key="b"))
    assert options["endpoint_url"] == "http://minio:9000" and options["aws_access_key_id"] == "a"
    assert options["config"].s3 == {"addressing_style": "path"} and options["config"].retries["max_attempts"] == 3
    assert isinstance(pickle.loads(pickle.dumps(options))["config"], object_store.LitDataS3Config)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    assert storage_options("s3://bucket/x")["config"].s3 is None  # AWS S3 itself: boto3's own addressing
