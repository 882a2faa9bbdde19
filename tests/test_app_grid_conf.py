"""The app's conf values: ``grid_spacing_3d`` (millimetres or ``none``) and the ``boundary_refinement`` switch;
anything else stops the app with a reason."""

from __future__ import annotations

import pytest

from unimed.transforms import GRID_SPACING_3D


@pytest.fixture
def grid_spacing(app_lib):
    import lib.configs.unimed as conf_module

    return lambda value: conf_module.parse_grid_spacing(value, "conf grid_spacing_3d")


@pytest.mark.parametrize("value, expected", [(None, GRID_SPACING_3D), ("1.5", 1.5), (" None ", None), ("3", 3.0)])
def test_grid_spacing_conf_values(grid_spacing, value, expected):
    assert grid_spacing(value) == expected


@pytest.mark.parametrize("value, message", [("fine", "conf grid_spacing_3d must be millimetres or 'none'"),
                                            ("0", "positive"), ("-2", "positive"), ("nan", "positive"),
                                            ("inf", "finite")])
def test_a_bad_grid_spacing_conf_names_the_constraint(grid_spacing, value, message):
    with pytest.raises(ValueError, match=message):
        grid_spacing(value)


@pytest.fixture
def switch(app_lib):
    import lib.configs.unimed as conf_module

    return lambda value: conf_module.parse_switch(value, "conf boundary_refinement")


@pytest.mark.parametrize("value, expected", [("true", True), (" False ", False), ("1", True), ("no", False)])
def test_boundary_refinement_conf_values(switch, value, expected):
    assert switch(value) is expected


@pytest.mark.parametrize("value", ["maybe", "", "2"])
def test_a_bad_switch_conf_names_the_key(switch, value):
    with pytest.raises(ValueError, match="conf boundary_refinement must be true or false"):
        switch(value)
