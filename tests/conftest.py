import os
from pathlib import Path

import pytest
import torch

# Real data and weights beside the checkout; tests that read them skip when they are absent.
SHARED = Path(os.environ.get("SHARED_DIR", Path(__file__).resolve().parents[2] / "shared"))
MOBILENET_WEIGHTS = SHARED / "weights" / "mobilenet_v2_imagenet.pth"


def needs_shared(*paths: Path):
    missing = [str(p) for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"shared data absent: {missing}")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
