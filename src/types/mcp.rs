//! How the gateway reaches an MCP server.

/// How Wharf talks to the MCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// MCP streamable HTTP (POST/GET/DELETE on one endpoint).
    StreamableHttp,
    /// The legacy HTTP+SSE transport (GET an event stream, POST to the announced endpoint).
    Sse,
    /// A local process speaking JSON-RPC over stdin/stdout, started by Wharf.
    Stdio,
}

impl Transport {
    pub fn parse(s: &str) -> Option<Transport> {
        Some(match s {
            "STREAMABLE_HTTP" => Transport::StreamableHttp,
            "SSE" => Transport::Sse,
            "STDIO" => Transport::Stdio,
            _ => return None,
        })
    }

    /// The configuration (and database enum) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "STREAMABLE_HTTP",
            Transport::Sse => "SSE",
            Transport::Stdio => "STDIO",
        }
    }
}
