import asyncio, sys, json
from tests.discovery.site_server import DiscoverySites, EMAIL, PASSWORD
from discovery import discover

async def main(paths):
    sites = DiscoverySites().start()
    for p in paths:
        creds = {"username": EMAIL, "password": PASSWORD} if p.startswith("/login") else None
        r = await discover(sites.url(p), allow_private=True, credentials=creds)
        print(p, r.status, r.reason, r.message, r.confidence, json.dumps(r.timings))
        print(json.dumps(r.config))
        print(json.dumps(r.refinements)[:1500])
        if r.status != "ready": print(json.dumps(r.probe)[:3000])
    sites.stop()

asyncio.run(main(sys.argv[1:]))
