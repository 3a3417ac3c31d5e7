"""An instance's stable name: set, or taken from the advertised URL, or host name and port."""

from __future__ import annotations

import socket

import pytest

from gateway.settings import SettingsError, load_settings
from store.instance_names import instance_name_for


def test_the_name_is_set_or_derived_and_stays_across_restarts(monkeypatch):
    monkeypatch.delenv("AIEM_INSTANCE_NAME", raising=False)
    monkeypatch.delenv("AIEM_ADVERTISE_URL", raising=False)
    named = load_settings(AIEM_INSTANCE_NAME=" web-1 ", AIEM_ADVERTISE_URL="http://10.0.0.5:81")
    assert named.instance_name_value() == "web-1"
    advertised = load_settings(AIEM_ADVERTISE_URL="https://aiem-2.internal/")
    assert advertised.instance_name_value() == "aiem-2.internal:443"
    bare = load_settings(ENDPOINT_MANAGER_PORT=8123)
    assert bare.instance_name_value() == f"{socket.gethostname()}:8123"
    # The same settings give the same name at every start (the instance id does not).
    assert (
        load_settings(ENDPOINT_MANAGER_PORT=8123).instance_name_value()
        == f"{socket.gethostname()}:8123"
    )
    assert instance_name_for("http://[::1]:8001") == "[::1]:8001"
    assert instance_name_for("") == socket.gethostname()


@pytest.mark.parametrize("bad", ["two words", "tab\there", "x" * 101])
def test_a_bad_name_is_one_clear_error(bad):
    with pytest.raises(SettingsError, match="AIEM_INSTANCE_NAME"):
        load_settings(AIEM_INSTANCE_NAME=bad)
