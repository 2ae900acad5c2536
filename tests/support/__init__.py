"""What the tests share (no tests here): each module holds one job, and test modules import from
these modules only, never from one another (tests/test_layout.py checks it).

paths      the repository and the shared real-world test data
waiting    the one generous timeout (WAIT) and the one polling wait (wait_for)
pki        the operator's root of the session, an issuer's key pair on disk, its cards
config     appliance config files (TOML) and the standalone device's tables
inputs     what feeds an input: pty serial readers, named pipes, a collector of scans
cameras    QR frames and scenes, and videos written with OpenCV
appliance  the appliance in this process (Lane), as a subprocess (Daemon), its NOTIFY_SOCKET and API
servers    the real sync server (in a thread or a process) on SQLite or PostgreSQL, with faults
proxy      a fault-injecting TCP proxy between device and server
devices    provisioned devices with real entry logs
entries    valid chained log entries made fast, for large backlogs and the central side
postgres   the session's private PostgreSQL server
terminal   a command run on a pty, as a person at a terminal runs it (and Ctrl-C)
"""
