"""The device's entry log: one durable, hash-chained SQLite record per scan, the holder's details
sealed to the central server's key, the one admission policy (degraded mode, anti-passback)
decided as each entry is written, occupancy, retention, and the clock state each entry carries.
Stands on ``scanner.cards`` and ``scanner.base``; docs/entry-log.md."""
