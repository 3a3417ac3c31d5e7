"""Settings: the configuration in force, as the API reports it (secrets only as set / not set)."""

from __future__ import annotations

import streamlit as st

from console.client import ApiError, get_client


def main() -> None:
    st.title("Settings")
    client = get_client()
    try:
        config = client.system_config()
    except ApiError as exc:
        st.error(f"The management API could not be read. {exc.message}")
        return
    columns = st.columns(3)
    columns[0].metric("Store", config["store"]["dialect"])
    columns[1].metric("Admin token", "set" if config["admin_token_set"] else "not set")
    columns[2].metric("Provider types", len(config.get("providers", [])))
    st.markdown(f"**Data directory** `{config['data_dir']}`")
    st.markdown(f"**Store** `{config['store']['url']}`")
    if not config["admin_token_set"]:
        st.caption("Without AIEM_ADMIN_TOKEN the API only listens on loopback.")
    st.subheader("Environment")
    rows = [{"variable": s["name"], "value": str(s["value"]),
             "source": "default" if s["default"] else "set", "meaning": s["description"]}
            for s in config["settings"]]
    st.dataframe(rows, hide_index=True, key="settings-env")
    st.caption("Provider types: " + ", ".join(f"`{t}`" for t in config.get("providers", [])))
    st.caption(f"Console talking to {client.base_url}.")


main()
