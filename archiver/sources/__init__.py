"""Sources: adapters that feed pass ids (and per-pass cipher keys) into the catalog."""
