"""CopyProvider: the fallback. The image is a plain byte copy of the volume's tree.

Works on any file system (``supports`` is true for any existing directory). Not instant and not atomic:
the image is only consistent if the caller holds the application quiesced for the whole call
(``needs_freeze_throughout=True``). The image lives beside the volume (see ``_layout``), so it must not be
made under an fsfreeze of that file system. Writable clones are plain copies too. No changed ranges: the
repository's metadata rule (size, mtime, ...) decides what to read again.

``prepare`` (called before the freeze) pre-copies the tree, so that the copy under the freeze only compares
page-cached bytes and writes the blocks that changed (see ``_treebase`` and ``_tree.PreCopy``).
"""

from __future__ import annotations

from typing import ClassVar

from frieze.host.providers._tree import FileCopier, copy_fd
from frieze.host.providers._treebase import TreeProvider
from frieze.host.providers.base import ProviderCapabilities


class CopyProvider(TreeProvider):
    name: str = "copy"
    capabilities: ProviderCapabilities = ProviderCapabilities(
        name="copy", writable_clone=True, changed_ranges=False, needs_freeze_throughout=True, instant=False)
    copier: ClassVar[FileCopier] = staticmethod(copy_fd)
    pre_copy: ClassVar[bool] = True
