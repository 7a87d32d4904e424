"""``python -m kaito_inference.fetch``: fill the node-local model cache with one
repo@revision, the init container of every preset's inference pod.

- target: ``<cache-dir>/<org>--<name>@<revision>/`` holds the repo's files as they are in
  the repo (``snapshot_download(local_dir=...)``; the client's own bookkeeping under
  ``.cache/huggingface/`` inside it), so the server loads ``--model <target>``;
- one download per node: an exclusive ``flock`` on ``<target>.lock``; a second fetcher
  waits (logging) and then finds the completion marker;
- resumable: the client resumes a broken transfer with ``Range`` (the file is kept);
  failed attempts are retried a bounded number of times, then the fetch fails;
- verified: every file's size, its sha256 where the hub gives one (LFS) and its git blob
  sha-1 otherwise, before ``.kaito-complete`` (the file list) is written; a target with
  that marker is reused at once, without a request;
- failures are final and named: exit non-zero with one line in the termination-message
  file starting with the reason (`Reason`).
"""

from kaito_inference.fetch.download import FetchError, Reason, fetch, target_dir

__all__ = ["FetchError", "Reason", "fetch", "target_dir"]
