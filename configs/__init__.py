"""The shipped run configurations (TOML); a package so that they install with smp."""

if __name__ != "smp.configs":  # one module identity: smp/__init__.py says why
    raise ImportError(f"import smp.configs, not {__name__} (smp/__init__.py)", name=__name__)
