"""Console entry script: page routing only; every page lives in console/pages/."""

import os

import streamlit as st

st.set_page_config(page_title="AI Endpoint Manager", page_icon=":material/hub:", layout="wide")

PAGES = {
    "Operate": [
        st.Page(
            "pages/portfolio.py",
            title="Portfolio",
            icon=":material/dashboard:",
            url_path="portfolio",
            default=True,
        ),
        st.Page("pages/endpoint.py", title="Endpoint", icon=":material/dns:", url_path="endpoint"),
        st.Page(
            "pages/edit.py",
            title="Add / edit endpoint",
            icon=":material/add_circle:",
            url_path="edit",
        ),
        st.Page(
            "pages/playground.py", title="Playground", icon=":material/chat:", url_path="playground"
        ),
        st.Page(
            "pages/sessions.py", title="Sessions", icon=":material/forum:", url_path="sessions"
        ),
    ],
    "Analyse": [
        st.Page(
            "pages/reports.py", title="Reports", icon=":material/monitoring:", url_path="reports"
        ),
    ],
    "Onboard": [
        st.Page(
            "pages/discovery.py",
            title="Discovery",
            icon=":material/travel_explore:",
            # Not "discovery": that path is the API's, which is served first.
            url_path="discover",
        ),
    ],
    "System": [
        st.Page(
            "pages/settings.py", title="Settings", icon=":material/settings:", url_path="settings"
        ),
    ],
}

if os.environ.get("AIEM_ADMIN_TOKEN"):
    # Signed in through the gateway's /login: /logout revokes the session cookie.
    st.sidebar.markdown('<a href="/logout" target="_self">Sign out</a>', unsafe_allow_html=True)

st.navigation({section: pages for section, pages in PAGES.items() if pages}).run()
