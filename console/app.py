"""Console entry script: page routing only; every page lives in console/pages/."""

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
        st.Page(
            "pages/discovery.py",
            title="Discovery",
            icon=":material/travel_explore:",
            # Not "discovery": that path is the API's, which is served first.
            url_path="discover",
        ),
    ],
}

st.navigation(PAGES).run()
