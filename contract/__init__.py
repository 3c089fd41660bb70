"""The contract between training and serving (DESIGN sections 3, 4 and 6), importing no
TensorFlow: locations and storage, the manifest, error types and exit codes, and the names
clients depend on. `trainer` and `serving` both use it and never import each other."""
