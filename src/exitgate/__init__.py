"""exitgate: a self-hosted proxy gateway in front of a pool of exit nodes."""

__version__ = "0.1.0"


def compiled() -> bool:
    """Does the connection path run compiled (the mypyc build, hatch_build.py)?"""
    import importlib.machinery
    import importlib.util

    spec = importlib.util.find_spec("exitgate.net.conn")
    return spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)
