"""The shipped run configurations (TOML); a package so that they install with smp."""
