"""The device's entry log: one durable, hash-chained SQLite record per scan, the holder's details
sealed to the central server's key, anti-passback and occupancy, retention, and the clock state
each entry carries. Stands on ``scanner.cards``."""
