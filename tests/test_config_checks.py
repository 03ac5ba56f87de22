"""Config value checks (runtime/config_checks.py) that are not exercised through one job's own tests."""

import ml_collections
import pytest

from abaw_jax.runtime import config_checks as checks
from abaw_jax.runtime.errors import ConfigError


def test_names_reads_strings_tuples_and_command_line_tuples_alike():
    config = ml_collections.ConfigDict(
        {"a": "au, expr,,va ", "b": ("au", "expr"), "c": ("au,expr",), "d": "", "e": ("",), "f": "au,expr,au"}
    )
    assert checks.names(config, "a") == ("au", "expr", "va")
    assert checks.names(config, "b") == checks.names(config, "c") == ("au", "expr")
    assert checks.names(config, "d") == checks.names(config, "e") == ()
    assert checks.names(config, "f", distinct=False) == ("au", "expr", "au")
    with pytest.raises(ConfigError, match=r"config.f='au,expr,au' names \['au'\] twice"):
        checks.names(config, "f")
