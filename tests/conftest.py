import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One DMDL_CACHE for the whole session, so the tiny SynthVI is generated once."""
    path = tmp_path_factory.mktemp("dmdl_cache")
    old = os.environ.get("DMDL_CACHE")
    os.environ["DMDL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("DMDL_CACHE", None)
    else:
        os.environ["DMDL_CACHE"] = old


@pytest.fixture(scope="session")
def tiny_root(cache_dir):
    from dmdl_dist.config import load_config
    from dmdl_dist.engine.data import dataset_root

    return dataset_root(load_config("tiny"))
