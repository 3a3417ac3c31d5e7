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
    ],
}

if os.environ.get("AIEM_ADMIN_TOKEN"):
    # Signed in through the gateway's /login: /logout revokes the session cookie.
    st.sidebar.markdown('<a href="/logout" target="_self">Sign out</a>', unsafe_allow_html=True)

st.navigation(PAGES).run()
