"""Options for every test path (tests/ and the doctests of ppl_vae/): pytest reads a conftest
at the root whatever the paths given."""


def pytest_addoption(parser, pluginmanager):
    """Without pytest-xdist (``-p no:xdist``, or not installed) accept the ``-n`` and
    ``--dist`` of addopts and run serially, so that a single file can be run without workers."""
    if not pluginmanager.has_plugin("xdist"):
        group = parser.getgroup("xdist", "absent: -n and --dist are ignored")
        group._addoption("-n", "--numprocesses", dest="numprocesses", default=None)  # as xdist
        group._addoption("--dist", dest="dist", default="no")
