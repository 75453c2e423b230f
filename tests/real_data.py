"""Where the project's real data lives for tests: ../shared/data beside the checkout.

$TFQAT_SHARED_DATA overrides it; a git worktree one level deeper (wt/NAME) also finds it.
"""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def shared_data_dir():
    """The folder holding cifar10_jpeg.npz and cifar10.py, or a pytest skip saying why not."""
    candidates = [os.environ.get("TFQAT_SHARED_DATA"),
                  os.path.join(os.path.dirname(ROOT), "shared", "data"),
                  os.path.join(os.path.dirname(os.path.dirname(ROOT)), "shared", "data")]
    for folder in filter(None, candidates):
        if os.path.isfile(os.path.join(folder, "cifar10.py")):
            return folder
    pytest.skip("the real images (../shared/data/cifar10.py) are not here; set "
                "TFQAT_SHARED_DATA to the folder that holds them")


def cifar10_module():
    """../shared/data/cifar10.py imported as a module (its `load` decodes the JPEG copy)."""
    script = os.path.join(shared_data_dir(), "cifar10.py")
    spec = importlib.util.spec_from_file_location("shared_cifar10", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
