"""The central console: the health authority's web application (docs/console.md).

Staff accounts with roles (administrator, tracer, ward/venue officer, auditor), argon2 passwords
and a TOTP second factor (accounts, sessions, roles); a hash-chained, append-only audit trail
(audit); the console's tables beside the server's (store); pages (app, templates/); tracing through
``sync.server.trace`` with holder details opened only by the separate opener process
(``sync.server.opener``, reached through ``openerclient``), never in this process; exports with
spreadsheet formulas neutralised (exports).
"""
