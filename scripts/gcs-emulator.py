#!/usr/bin/env python3
"""Start gcp-storage-emulator (PyPI) with two fixes that make it answer as real GCS does.

The official `google-cloud-storage` Rust crate talks to this emulator over the JSON API,
but two emulator gaps break it (both documented in the team kit's README):

1. The resumable-upload `Location` is built from the request's `Host` header, and the
   crate sends `Host: 127.0.0.1` without the port, so chunk uploads go to port 80. Real
   GCS returns an absolute session URL; we rebuild `Host` with the listening port.
2. Downloads lack `x-goog-generation`, which real GCS always sends and the crate
   requires. We add the object's generation.
3. `rewriteTo` ignores the destination resource in the request body; real GCS applies
   its `metadata`/`contentType` to the new object (pgp's extractor finalizes a chunk by
   rewriting its upload to the final name with the row count in the metadata).
4. `rewriteTo` ignores the `ifGenerationMatch` precondition. Real GCS, given
   `ifGenerationMatch=0`, writes the destination only if no live object has its name
   and otherwise answers 412 Precondition Failed
   (https://cloud.google.com/storage/docs/request-preconditions); pgp's planner creates
   a run's record that way, so that of two planners of one request exactly one wins.
   We check the destination and answer 412 as GCS does (a check-then-write: the
   emulator serves one request at a time, so nothing comes between the two).

Nothing else is changed: uploads, metadata, listing and deletes are the emulator's own.
Usage: gcs-emulator.py -d DIR start --host 127.0.0.1 --port PORT --default-bucket B
"""
import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.handlers import objects

_orig_request_init = server.Request.__init__


def _request_init(self, request_handler, method):
    host = request_handler.headers.get("Host")
    port = request_handler.server.server_address[1]
    if host and ":" not in host.rsplit("]", 1)[-1]:
        request_handler.headers.replace_header("Host", "{}:{}".format(host, port))
    _orig_request_init(self, request_handler, method)


_orig_download = objects.download


def _download(request, response, storage, *args, **kwargs):
    try:
        obj = storage.get_file_obj(
            request.params["bucket_name"], request.params["object_id"]
        )
        response["x-goog-generation"] = str(obj.get("generation", "1"))
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
    except Exception:  # absent object: the original handler answers 404
        pass
    return _orig_download(request, response, storage, *args, **kwargs)


_orig_rewrite = objects.rewrite


def _rewrite(request, response, storage, *args, **kwargs):
    if request.query.get("ifGenerationMatch") == ["0"]:
        try:
            storage.get_file_obj(
                request.params["dest_bucket_name"], request.params["dest_object_id"]
            )
            exists = True
        except Exception:  # NotFound: the name is free
            exists = False
        if exists:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json(
                {"error": {"code": 412, "message": "At least one of the pre-conditions you specified did not hold."}}
            )
            return
    _orig_rewrite(request, response, storage, *args, **kwargs)
    body = request.data
    if not isinstance(body, dict) or not body or response.status != HTTPStatus.OK:
        return
    bucket = request.params["dest_bucket_name"]
    name = request.params["dest_object_id"]
    obj = storage.get_file_obj(bucket, name)
    for key in ("metadata", "contentType", "contentEncoding", "cacheControl"):
        if key in body:
            obj[key] = body[key]
    storage.patch_object(bucket, name, obj)
    size = str(obj["size"])
    response.json(
        {
            "kind": "storage#rewriteResponse",
            "totalBytesRewritten": size,
            "objectSize": size,
            "done": True,
            "resource": obj,
        }
    )


server.Request.__init__ = _request_init
objects.download = _download  # `objects.get` (alt=media) calls it by name
for _regex, handlers in server.HANDLERS:
    for method, fn in list(handlers.items()):
        if fn is _orig_download:
            handlers[method] = _download
        elif fn is _orig_rewrite:
            handlers[method] = _rewrite

if __name__ == "__main__":
    main(sys.argv[1:])
