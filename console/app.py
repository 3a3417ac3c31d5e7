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
        st.Page("pages/endpoint.py", title="Endpoint", icon=":material/dns:", url_path="endpoint"),
        st.Page(
            "pages/edit.py", title="Add / edit endpoint", icon=":material/add_circle:",
            url_path="edit",
        ),
        st.Page("pages/playground.py", title="Playground", icon=":material/chat:",
                url_path="playground"),
        st.Page("pages/sessions.py", title="Sessions", icon=":material/forum:",
                url_path="sessions"),
    ],
    "Analyse": [
        st.Page("pages/reports.py", title="Reports", icon=":material/monitoring:",
                url_path="reports"),
    ],
    # Discovery's review page joins this section: st.Page("pages/discovery.py", ...).
    "Onboard": [],
    "System": [
        st.Page("pages/settings.py", title="Settings", icon=":material/settings:",
                url_path="settings"),
    ],
}

st.navigation({section: pages for section, pages in PAGES.items() if pages}).run()
