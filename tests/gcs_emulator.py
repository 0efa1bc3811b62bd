"""Runs gcp-storage-emulator (same arguments) with one gap closed: media downloads carry the
object's generation in `x-goog-generation` (and `x-goog-metageneration`), as Cloud Storage's do
(cloud.google.com/storage/docs/xml-api/reference-headers#xgooggeneration). The emulator omits
them, so tensorstore reads generation 0 and its conditional writes (orbax's OCDBT manifests)
fail with "Malformed StorageGeneration" on the emulator while they work on Cloud Storage.
"""
import sys

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download(request, response, storage, *args, **kwargs):
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])
  except NotFound:
    pass  # The emulator's own handler answers 404.
  return _download(request, response, storage, *args, **kwargs)


objects.download = download  # Before the server module builds its routing table from it.

from gcp_storage_emulator.__main__ import main  # noqa: E402  pylint: disable=g-import-not-at-top

if __name__ == "__main__":
  sys.exit(main())
