//! STDIO MCP servers bridged to streamable HTTP.
//!
//! Wharf starts the configured command (its arguments and environment come from the
//! configuration only: the environment is cleared, then `PATH` and the configured variables
//! are set; nothing of the client's request reaches the command line or the environment).
//! One process per MCP session: a POST `initialize` without `Mcp-Session-Id` starts one and
//! the answer carries its new session id. Messages are written to its stdin one per line;
//! its stdout answers are matched to the waiting requests by JSON-RPC id, anything else
//! (notifications, requests of the server) goes to the session's GET event stream. The
//! number of processes per server is bounded; a process is killed (and reaped) when its
//! session is deleted, when it has been idle for the server's idle timeout, or when the
//! gateway stops. A process that dies on its own is restarted in its session: Wharf replays
//! the session's handshake (`initialize`, then `notifications/initialized`) to the new process
//! and swallows its answers, so the client keeps its session id; requests in flight at the
//! crash fail (502). After [`MAX_RESTARTS`] restarts the session ends instead (404 on the next
//! request, and the client initializes a new one).

use super::config::McpServer;
use super::{guardrails, write_error, write_full, McpCtx, Request};
use crate::error::{ErrorCode, GatewayError};
use bytes::Bytes;
use once_cell::sync::Lazy;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use serde_json::Value;
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

/// Largest line read from a process.
const MAX_LINE: usize = 16 * 1024 * 1024;
/// Queued server messages for the GET stream, per session.
const EVENTS_QUEUE: usize = 256;
/// `PATH` of the processes.
const PATH: &str = "/usr/local/bin:/usr/bin:/bin";
/// Restarts of a crashed process within one session before the session ends.
pub const MAX_RESTARTS: u32 = 3;
/// Handshake messages kept per session for a restart.
const MAX_HANDSHAKE: usize = 4;

/// One running process.
pub struct Process {
    pub server_id: String,
    server: Arc<McpServer>,
    /// Restarts so far in this session.
    restarts: u32,
    /// The session's handshake, replayed to a restarted process.
    handshake: Mutex<Vec<Value>>,
    /// The key that started the session: only it may use the session.
    pub key_id: String,
    stdin: tokio::sync::Mutex<Option<tokio::process::ChildStdin>>,
    child: tokio::sync::Mutex<Option<tokio::process::Child>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    events: Mutex<Option<mpsc::Receiver<Value>>>,
    alive: AtomicBool,
    /// Milliseconds since `epoch` of the last use.
    last_used: AtomicU64,
    epoch: Instant,
    pub pid: Option<u32>,
}

impl Process {
    fn touch(&self) {
        self.last_used
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = self.last_used.load(Ordering::Relaxed);
        self.epoch
            .elapsed()
            .saturating_sub(Duration::from_millis(last))
    }

    /// Keeps the session's `initialize` and `notifications/initialized` for a restart.
    fn remember_handshake(&self, messages: &[Value]) {
        let mut h = self.handshake.lock().unwrap_or_else(|e| e.into_inner());
        for m in messages {
            let method = m.get("method").and_then(Value::as_str);
            if matches!(method, Some("initialize" | "notifications/initialized"))
                && h.len() < MAX_HANDSHAKE
            {
                h.push(m.clone());
            }
        }
    }

    /// Kills the process and waits for it (no zombie left).
    async fn stop(&self) {
        self.alive.store(false, Ordering::SeqCst);
        *self.stdin.lock().await = None;
        if let Some(mut c) = self.child.lock().await.take() {
            let _ = c.kill().await;
        }
        for (_, tx) in self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            drop(tx);
        }
    }
}

/// Every session of every STDIO server of this gateway.
static SESSIONS: Lazy<Mutex<HashMap<String, Arc<Process>>>> = Lazy::new(Default::default);

fn sessions() -> std::sync::MutexGuard<'static, HashMap<String, Arc<Process>>> {
    SESSIONS.lock().unwrap_or_else(|e| e.into_inner())
}

fn stdio_error(msg: impl Into<String>) -> GatewayError {
    GatewayError::new(ErrorCode::McpStdioError, msg)
}

/// Number of live processes of `server_id` (for tests and the bound).
pub fn live(server_id: &str) -> usize {
    sessions()
        .values()
        .filter(|p| p.server_id == server_id)
        .count()
}

async fn remove(session: &str) {
    let p = sessions().remove(session);
    if let Some(p) = p {
        p.stop().await;
    }
}

/// Removes `session` if `p` is still its process (not a restarted successor).
async fn remove_if(session: &str, p: &Arc<Process>) {
    let gone = {
        let mut m = sessions();
        match m.get(session) {
            Some(cur) if Arc::ptr_eq(cur, p) => m.remove(session),
            _ => None,
        }
    };
    if let Some(p) = gone {
        p.stop().await;
    }
}

/// Starts a process for `server` and registers it under a new session id.
async fn spawn(
    server: &Arc<McpServer>,
    key_id: &str,
) -> Result<(String, Arc<Process>), GatewayError> {
    if live(&server.id) >= server.max_sessions {
        return Err(stdio_error(format!(
            "MCP server `{}` already runs its maximum of {} sessions",
            server.slug, server.max_sessions
        )));
    }
    let (p, stdout, tx) = start(server, key_id, 0, Vec::new())?;
    let session = uuid::Uuid::new_v4().simple().to_string();
    sessions().insert(session.clone(), p.clone());
    tokio::spawn(read_stdout(session.clone(), p.clone(), stdout, tx));
    tokio::spawn(reap_when_idle(
        session.clone(),
        p.clone(),
        server.idle_timeout,
    ));
    tracing::info!(server = %server.slug, pid = ?p.pid, "STDIO MCP server started");
    Ok((session, p))
}

/// Starts the process of a crashed one in the same session and replays the session's
/// handshake to it. `false` when the session ends instead.
async fn restart(session: &str, old: &Arc<Process>) -> bool {
    let server = old.server.clone();
    let current = || {
        sessions()
            .get(session)
            .is_some_and(|cur| Arc::ptr_eq(cur, old))
    };
    if old.restarts >= MAX_RESTARTS || !current() {
        tracing::warn!(server = %server.slug, restarts = old.restarts, "STDIO MCP server ended; its session ends");
        return false;
    }
    let handshake = old
        .handshake
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let Ok((p, stdout, tx)) = start(&server, &old.key_id, old.restarts + 1, handshake.clone())
    else {
        return false;
    };
    tokio::spawn(read_stdout(session.to_string(), p.clone(), stdout, tx));
    if exchange(&p, &handshake, server.timeout).await.is_err() {
        p.stop().await;
        return false;
    }
    let replaced = {
        let mut m = sessions();
        match m.get(session) {
            Some(cur) if Arc::ptr_eq(cur, old) => {
                m.insert(session.to_string(), p.clone());
                true
            }
            _ => false,
        }
    };
    if !replaced {
        p.stop().await;
        return false;
    }
    tokio::spawn(reap_when_idle(
        session.to_string(),
        p.clone(),
        server.idle_timeout,
    ));
    tracing::warn!(server = %server.slug, pid = ?p.pid, restarts = p.restarts, "STDIO MCP server crashed; restarted in its session");
    true
}

/// Starts the configured command; its stdout and the sender of its event queue go to
/// [`read_stdout`].
fn start(
    server: &Arc<McpServer>,
    key_id: &str,
    restarts: u32,
    handshake: Vec<Value>,
) -> Result<
    (
        Arc<Process>,
        tokio::process::ChildStdout,
        mpsc::Sender<Value>,
    ),
    GatewayError,
> {
    let command = server.command.as_deref().unwrap_or_default();
    let mut cmd = tokio::process::Command::new(command);
    cmd.args(&server.args)
        .env_clear()
        .env("PATH", PATH)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in &server.env {
        cmd.env(k, v.expose());
    }
    let mut child = cmd.spawn().map_err(|e| {
        tracing::warn!(server = %server.slug, error = %e, "cannot start STDIO MCP server");
        stdio_error(format!("MCP server `{}` could not be started", server.slug))
    })?;
    let stdin = child.stdin.take();
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| stdio_error("the MCP server's stdout is not available"))?;
    let (tx, rx) = mpsc::channel(EVENTS_QUEUE);
    let p = Arc::new(Process {
        server_id: server.id.clone(),
        server: server.clone(),
        restarts,
        handshake: Mutex::new(handshake),
        key_id: key_id.to_string(),
        pid: child.id(),
        stdin: tokio::sync::Mutex::new(stdin),
        child: tokio::sync::Mutex::new(Some(child)),
        pending: Mutex::new(HashMap::new()),
        events: Mutex::new(Some(rx)),
        alive: AtomicBool::new(true),
        last_used: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    p.touch();
    Ok((p, stdout, tx))
}

/// Routes the process's output: answers to their waiting requests, the rest to the events.
/// Boxed with its `Send` bound spelled out: a crash restarts the process, which spawns this
/// again, and the compiler cannot infer `Send` through that cycle.
fn read_stdout(
    session: String,
    p: Arc<Process>,
    stdout: tokio::process::ChildStdout,
    events: mpsc::Sender<Value>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    Box::pin(read_stdout_inner(session, p, stdout, events))
}

async fn read_stdout_inner(
    session: String,
    p: Arc<Process>,
    stdout: tokio::process::ChildStdout,
    events: mpsc::Sender<Value>,
) {
    let mut r = BufReader::new(stdout);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) if line.len() > MAX_LINE => continue,
            Ok(_) => {}
        }
        let Ok(v) = serde_json::from_slice::<Value>(&line) else {
            continue;
        };
        let waiting = match (guardrails::id_key(&v), v.get("method")) {
            (Some(id), None) => p
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id),
            _ => None,
        };
        match waiting {
            Some(tx) => {
                let _ = tx.send(v);
            }
            None => {
                let _ = events.try_send(v);
            }
        }
    }
    // The process ended (or closed its stdout). Stopped by Wharf: nothing more to do. On its
    // own: restarted in its session, or the session ends.
    let crashed = p.alive.load(Ordering::SeqCst);
    if crashed {
        // Reap it and fail the requests still waiting on it, then start its successor.
        p.stop().await;
        if restart(&session, &p).await {
            return;
        }
    }
    remove_if(&session, &p).await;
}

async fn reap_when_idle(session: String, p: Arc<Process>, idle: Duration) {
    let tick = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::time::sleep(tick).await;
        if !p.alive.load(Ordering::SeqCst) {
            return;
        }
        if p.idle_for() >= idle {
            tracing::info!(pid = ?p.pid, "STDIO MCP session idle; process stopped");
            remove(&session).await;
            return;
        }
    }
}

/// Writes the messages to the process and waits for the answers to its requests.
async fn exchange(
    p: &Process,
    messages: &[Value],
    timeout: Duration,
) -> Result<Vec<Value>, GatewayError> {
    let mut waits = Vec::new();
    let mut out = Vec::new();
    for m in messages {
        if let (Some(id), Some(_)) = (guardrails::id_key(m), m.get("method")) {
            let (tx, rx) = oneshot::channel();
            p.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id, tx);
            waits.push(rx);
        }
        out.extend_from_slice(m.to_string().as_bytes());
        out.push(b'\n');
    }
    {
        let mut stdin = p.stdin.lock().await;
        let Some(w) = stdin.as_mut() else {
            return Err(stdio_error("the MCP server process has ended"));
        };
        let ok = w.write_all(&out).await.is_ok() && w.flush().await.is_ok();
        if !ok {
            return Err(stdio_error("the MCP server process has ended"));
        }
    }
    let mut answers = Vec::with_capacity(waits.len());
    for rx in waits {
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => answers.push(v),
            Ok(Err(_)) => return Err(stdio_error("the MCP server process ended before answering")),
            Err(_) => {
                return Err(stdio_error(format!(
                    "the MCP server did not answer within {} ms",
                    timeout.as_millis()
                )))
            }
        }
    }
    p.touch();
    Ok(answers)
}

/// Serves one request on a STDIO server.
pub async fn serve(s: &mut Session, m: &mut McpCtx, req: Request<'_>) -> pingora::Result<()> {
    let rid = req.request_id;
    let session = req
        .headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    m.session_id = session.clone();
    // A session belongs to one server and to the key that started it.
    let found = session
        .as_ref()
        .and_then(|id| sessions().get(id).cloned())
        .filter(|p| p.server_id == m.server.id && p.key_id == req.key_id);
    if *req.method == ::http::Method::DELETE {
        return match (session, found) {
            (Some(id), Some(_)) => {
                remove(&id).await;
                write_full(s, m, 204, None, &[], rid, Bytes::new()).await
            }
            _ => session_not_found(s, m, rid).await,
        };
    }
    if *req.method == ::http::Method::GET {
        return match found {
            Some(p) => events(s, m, p, rid).await,
            None => session_not_found(s, m, rid).await,
        };
    }
    m.bytes_in = req.body.len() as u64;
    let checked = match guardrails::check(&m.server, req.body.clone()) {
        Ok(c) => c,
        Err(e) => return write_error(s, m, rid, &e).await,
    };
    let initialize = checked.calls.iter().any(|c| c.method == "initialize");
    m.track(checked.calls);
    let mut refusals = checked.refusals;
    let Some(forward) = checked.forward else {
        m.error_code = Some(ErrorCode::McpGuardrailBlock.as_str().to_string());
        let body = if checked.batch {
            Value::Array(refusals)
        } else {
            refusals.pop().unwrap_or(Value::Null)
        };
        let b = Bytes::from(body.to_string());
        return write_full(s, m, 403, Some("application/json"), &[], rid, b).await;
    };
    let (p, new_session) = match found {
        Some(p) => (p, None),
        None if session.is_none() && initialize => match spawn(&m.server, req.key_id).await {
            Ok((id, p)) => (p, Some(id)),
            Err(e) => return write_error(s, m, rid, &e).await,
        },
        None if session.is_some() => return session_not_found(s, m, rid).await,
        None => {
            let e = GatewayError::new(
                ErrorCode::InvalidRequest,
                "send initialize first: this MCP server starts a process per session",
            );
            return write_error(s, m, rid, &e).await;
        }
    };
    if let Some(id) = &new_session {
        m.session_id = Some(id.clone());
    }
    let messages: Vec<Value> = match serde_json::from_slice::<Value>(&forward) {
        Ok(Value::Array(a)) => a,
        Ok(v) => vec![v],
        Err(_) => Vec::new(),
    };
    let answers = match exchange(&p, &messages, m.server.timeout).await {
        Ok(a) => a,
        Err(e) => {
            if let Some(id) = &new_session {
                remove(id).await;
            }
            return write_error(s, m, rid, &e).await;
        }
    };
    p.remember_handshake(&messages);
    let mut extra: Vec<(&'static str, String)> = Vec::new();
    if let Some(id) = &m.session_id {
        extra.push(("mcp-session-id", id.clone()));
    }
    if answers.is_empty() && refusals.is_empty() {
        return write_full(s, m, 202, None, &extra, rid, Bytes::new()).await;
    }
    let mut body = if checked.batch {
        let mut all = answers;
        all.append(&mut refusals);
        Value::Array(all)
    } else {
        answers.into_iter().next().unwrap_or(Value::Null)
    };
    let len = body.to_string().len() as u64;
    m.answered(&body, len);
    guardrails::filter_tools(&m.server, &mut body);
    let b = Bytes::from(body.to_string());
    write_full(s, m, 200, Some("application/json"), &extra, rid, b).await
}

async fn session_not_found(s: &mut Session, m: &mut McpCtx, rid: &str) -> pingora::Result<()> {
    let e = GatewayError::new(
        ErrorCode::McpNotFound,
        "no such MCP session (it ended or expired): initialize a new one",
    );
    write_error(s, m, rid, &e).await
}

/// The session's server-initiated messages as an event stream (one GET at a time).
async fn events(
    s: &mut Session,
    m: &mut McpCtx,
    p: Arc<Process>,
    rid: &str,
) -> pingora::Result<()> {
    let rx = p.events.lock().unwrap_or_else(|e| e.into_inner()).take();
    let Some(mut rx) = rx else {
        let e = GatewayError::new(
            ErrorCode::InvalidRequest,
            "this MCP session already has an open event stream",
        );
        return write_error(s, m, rid, &e).await;
    };
    let mut h = ResponseHeader::build(200, Some(4))?;
    h.insert_header("content-type", "text/event-stream")?;
    h.insert_header("cache-control", "no-cache")?;
    h.insert_header("transfer-encoding", "chunked")?;
    h.insert_header("x-request-id", rid)?;
    for (k, v) in &m.headers {
        h.insert_header(*k, v.as_str())?;
    }
    m.status = 200;
    m.stream = true;
    s.write_response_header(Box::new(h), false).await?;
    // A comment first, so that the client sees the stream open at once.
    let r = s
        .write_response_body(Some(Bytes::from_static(b": stream open\n\n")), false)
        .await;
    if r.is_ok() {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(15), rx.recv()).await;
            let ev = match next {
                Ok(Some(mut v)) => {
                    guardrails::filter_tools(&m.server, &mut v);
                    super::http::message_event(&v)
                }
                Ok(None) => break,
                Err(_) if p.alive.load(Ordering::SeqCst) => Bytes::from_static(b": ping\n\n"),
                Err(_) => break,
            };
            m.bytes_out += ev.len() as u64;
            if s.write_response_body(Some(ev), false).await.is_err() {
                break;
            }
        }
    }
    // Give the queue back for a later GET, if the session lives on.
    *p.events.lock().unwrap_or_else(|e| e.into_inner()) = Some(rx);
    s.write_response_body(None, true).await
}
