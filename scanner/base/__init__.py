"""The ground floor: what every part shares and nothing else. Reason codes and typed errors, the
translation catalogue (Vietnamese first, English), text made safe for logs and terminals, and the
one atomic file write. Imports nothing of the project."""
