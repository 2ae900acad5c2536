"""The reference central server: a Starlette app on uvicorn, storage behind an interface
(SQLite by default), enrollment tokens, chain and gap checks, heartbeats, stats, bundle publishing.
Protocol: docs/sync-protocol.md.
"""
