-- STDIO MCP servers: how many processes (sessions) a server may run at once on a node, and
-- how long an idle session lives, as the TOML file already allows.
ALTER TABLE mcp_servers
    ADD COLUMN max_sessions    integer NOT NULL DEFAULT 16 CHECK (max_sessions > 0),
    ADD COLUMN idle_timeout_ms integer NOT NULL DEFAULT 300000 CHECK (idle_timeout_ms > 0);
