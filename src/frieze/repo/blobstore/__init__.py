"""Blob stores: the bottom layer of the repository. The port is :class:`frieze.repo.blobstore.base.BlobStore`."""
