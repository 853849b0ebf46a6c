"""frieze.repo: the repository (the vault). Layers, bottom up: blobstore -> packs/index -> chunks ->
files/trees -> snapshot manifests. See docs/design/repository-format.md."""
