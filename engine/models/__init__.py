"""Model files: what Cleo has, what it can fetch, and whether it fits.

- `gguf_header`: the one GGUF reader (metadata and tensor table, never the weights), for a file
  on disk and for the start of a file on Hugging Face, with the same checks and limits;
- `catalog`: the models on disk (split models grouped at their first part) and `model_info`, the
  one meaning of a header's facts, for local and remote files alike;
- `downloads`: the hardened downloader (https, resumable, size and sha256 checked) and the
  bundled catalog of downloads;
- `hub_http`, `hub`: Hugging Face's API (search, a repository's files pinned to a commit,
  Cleo's suggested models);
- `remote_header`: a file's header read with Range requests before a download, and the fit
  estimate from it;
- `hub_downloads`: downloading a file (or every part of a split model) found on the Hub, checked
  for space, with progress, through `downloads`, queued;
- `fit`: how much memory a model needs and how many layers a GPU can take.
"""
