"""Environment report: versions, disk, live checks, warnings instead of failures."""

from __future__ import annotations

import json

import pytest
import torch

from shoelib import environment as env
from shoelib.device import choose_policy
from shoelib.paths import PROJECT_ROOT


def test_versions_are_the_installed_ones():
    import diffusers

    versions = env.package_versions(("torch", "diffusers", "no-such-package-xyz"))
    assert versions == {"torch": torch.__version__, "diffusers": diffusers.__version__,
                        "no-such-package-xyz": None}


def test_disk_of_a_folder_not_yet_created_is_asked_of_its_parent(tmp_path):
    disk = env.disk_free_bytes(tmp_path / "run" / "environment")
    assert disk["disk_path"] == str(tmp_path.resolve())
    assert 0 < disk["disk_free_bytes"] <= disk["disk_total_bytes"]


def test_relative_disk_path_is_project_relative():
    assert env.disk_free_bytes("data/not-created-yet")["disk_path"].startswith(str(PROJECT_ROOT))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_matmul_check_passes_on_this_cpu(dtype, recwarn):
    check = env.matmul_check(choose_policy("cpu", dtype))
    assert check.ok and check.max_relative_error <= check.tolerance
    assert check.dtype == dtype


def test_matmul_check_flags_a_device_that_computes_imprecisely(monkeypatch):
    """float16 held to float32's tolerance stands in for a device that computes wrongly."""
    monkeypatch.setitem(env.MATMUL_TOLERANCE, torch.float16, env.MATMUL_TOLERANCE[torch.float32])
    with pytest.warns(UserWarning, match="float16 on CPU"):
        policy = choose_policy("cpu", "float16")
    report = env.environment_report(policy, PROJECT_ROOT)
    assert not report["matmul_check"]["ok"]
    assert report["matmul_check"]["max_relative_error"] > 1e-4
    assert any("computes wrongly" in w for w in report["warnings"])
    assert any("float16 on CPU" in w for w in report["warnings"])  # the policy's own risk


def test_sdpa_matches_the_formula():
    assert env.attention_check(choose_policy("cpu")) == {"sdpa_available": True,
                                                          "sdpa_matches_reference": True}


def test_report_is_json_ready_and_missing_optional_packages_are_warnings(monkeypatch, tmp_path):
    monkeypatch.setattr(env, "OPTIONAL_PACKAGES", ("no-such-package-xyz",))
    report = env.environment_report(choose_policy("cpu"), tmp_path)
    json.dumps(report)
    assert report["policy"]["device"] == "cpu" and report["policy"]["dtype"] == "float32"
    assert (report["device"], report["dtype"], report["reason"]) == ("cpu", "float32", report["policy"]["reason"])
    assert report["warnings"] == ["no-such-package-xyz is not installed (optional)"]
    assert report["gradient_checkpointing"] is True
    assert report["memory"]["ram_total_bytes"] >= report["memory"]["ram_available_bytes"] > 0
    assert report["cpu"]["torch_threads"] == torch.get_num_threads()
