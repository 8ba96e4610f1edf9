"""enpheeph_onnx.campaign.config: CampaignConfig validation and fault-rate lists and log
grids (``parse_rates``)."""

from __future__ import annotations

import pytest

from enpheeph_onnx.campaign import CampaignConfig, parse_rates
from enpheeph_onnx.errors import EnpheephError
from enpheeph_onnx.faults import FaultModel


def test_bad_config() -> None:
    with pytest.raises(EnpheephError, match="trials"):
        CampaignConfig(trials=0)
    with pytest.raises(EnpheephError, match="needs --value"):
        CampaignConfig(fault_model=FaultModel.VALUE)


def test_parse_rates() -> None:
    assert parse_rates("1e-7,1e-6,1e-5") == (1e-7, 1e-6, 1e-5)
    assert parse_rates("1e-7:1e-1:1") == (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    grid = parse_rates("1e-7:1e-1:2")
    assert len(grid) == 13 and grid[1] == pytest.approx(3.16228e-7)
    with pytest.raises(EnpheephError, match="yields no rate"):
        parse_rates("1e-1:1e-7:2")
    with pytest.raises(EnpheephError, match="malformed"):
        parse_rates("1e-7:abc:2")
