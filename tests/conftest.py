"""Test setup: 8 fake CPU devices and fast compiles; must run before JAX is imported.

Compiled programs go to a persistent XLA cache shared by the tests and the CLI subprocesses they
start: many tests build the same tiny models, and a cache hit replaces a compile. It lives in the
system's temp folder (``JAX_COMPILATION_CACHE_DIR`` overrides it); deleting it only costs time.
"""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jaxproto-tests-xla-cache")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402
import pytest  # noqa: E402
from absl import flags  # noqa: E402

jax.config.update("jax_disable_most_optimizations", True)

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


@pytest.fixture(scope="session")
def repo_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
