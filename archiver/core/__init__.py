"""The pure core: no I/O. Decoding, JPEG checks, hashing, retention, manifests."""
