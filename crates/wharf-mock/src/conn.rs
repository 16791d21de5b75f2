//! Minimal HTTP/1.1 server side: request parsing (Content-Length and chunked
//! bodies, pipelining, keep-alive) and response writing (unary bodies with
//! Content-Length, SSE with chunked transfer-encoding), plus the connection
//! faults the mock can inject.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::common::{Action, Body, Reply, TimingHeader, Truncation};
use super::{openai, router};
use super::{Shared, MAX_BODY_BYTES};

/// Largest request head (request line plus headers).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most headers one request may carry.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line or trailer line in a chunked body.
const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Bodies up to this size are copied out of the read buffer; larger ones are
/// split off it (they fill the buffer anyway).
const COPY_BODY_LIMIT: usize = 64 * 1024;
/// Don't buffer more than this while waiting on a streaming response.
const MAX_BUFFERED_WHILE_BUSY: usize = 1024 * 1024;
/// How long to wait for the peer to close after we half-close.
const LINGER: Duration = Duration::from_millis(500);

/// A parsed request with its full body.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub keep_alive: bool,
    /// HTTP/1.1 (chunked responses allowed) rather than HTTP/1.0.
    pub http11: bool,
    pub received_at: Instant,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request target without the query string.
    pub fn route(&self) -> &str {
        match self.path.find('?') {
            Some(i) => &self.path[..i],
            None => &self.path,
        }
    }

    /// The query string (without `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.path.split_once('?').map(|(_, q)| q)
    }
}

#[derive(Debug)]
enum ReadError {
    /// The peer closed the connection between requests.
    Closed,
    Io,
    /// Malformed or unacceptable request: answer with this status and close.
    Bad(u16, &'static str),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Io
    }
}

/// Serves one TCP connection until it closes.
pub(crate) async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    // Best effort: without TCP_NODELAY SSE events could sit in Nagle's buffer.
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: BytesMut::with_capacity(8 * 1024),
        peer_eof: false,
    };
    loop {
        let req = match conn.read_request().await {
            Ok(req) => req,
            Err(ReadError::Closed) | Err(ReadError::Io) => return,
            Err(ReadError::Bad(status, message)) => {
                let reply = openai::protocol_error(status, message);
                if conn
                    .send_unary(&reply, false, false, Instant::now())
                    .await
                    .is_ok()
                {
                    conn.close_gracefully().await;
                }
                return;
            }
        };
        shared.record(&req);
        let keep_alive = match router::handle(&shared.cfg, &req) {
            Action::Reset => {
                conn.reset();
                return;
            }
            Action::Close => {
                conn.close_gracefully().await;
                return;
            }
            Action::Hang => {
                conn.wait_for_close().await;
                return;
            }
            Action::Reply(reply) => match conn.send(&req, reply).await {
                Ok(true) => req.keep_alive,
                Ok(false) | Err(_) => return,
            },
        };
        if !keep_alive {
            conn.close_gracefully().await;
            return;
        }
    }
}

struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// The peer half-closed its side (it may still read our answer).
    peer_eof: bool,
}

impl Conn {
    /// Reads more bytes into the buffer; `Ok(0)` means EOF.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < 4 * 1024 {
            self.buf.reserve(16 * 1024);
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Like [`Conn::fill`] but EOF is an error (we are inside a message).
    async fn fill_some(&mut self) -> Result<(), ReadError> {
        match self.fill().await? {
            0 => Err(ReadError::Io),
            _ => Ok(()),
        }
    }

    async fn read_request(&mut self) -> Result<Request, ReadError> {
        let (mut req, framing, expect_continue) = loop {
            if !self.buf.is_empty() {
                if let Some(parsed) = self.parse_head()? {
                    break parsed;
                }
                if self.buf.len() > MAX_HEAD_BYTES {
                    return Err(ReadError::Bad(431, "Request header fields too large."));
                }
            }
            if self.fill().await? == 0 {
                return Err(if self.buf.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::Io
                });
            }
        };
        req.received_at = Instant::now();
        req.body = match framing {
            Framing::Empty => Bytes::new(),
            Framing::Length(len) => {
                if expect_continue && self.buf.len() < len {
                    self.stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await?;
                }
                self.read_sized_body(len).await?
            }
            Framing::Chunked => {
                if expect_continue && self.buf.is_empty() {
                    self.stream
                        .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                        .await?;
                }
                self.read_chunked_body().await?
            }
        };
        Ok(req)
    }

    /// Parses the request head at the start of the buffer and consumes it.
    /// `Ok(None)` means more bytes are needed.
    fn parse_head(&mut self) -> Result<Option<(Request, Framing, bool)>, ReadError> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut headers);
        let head_len = match parsed.parse(&self.buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(ReadError::Bad(431, "Too many request header fields."))
            }
            Err(_) => return Err(ReadError::Bad(400, "Malformed HTTP request.")),
        };
        let http11 = parsed.version == Some(1);
        let method = parsed.method.unwrap_or("GET").to_owned();
        let path = parsed.path.unwrap_or("/").to_owned();

        let mut out = Vec::with_capacity(parsed.headers.len());
        let mut content_length: Option<usize> = None;
        let mut chunked = false;
        let mut has_te = false;
        let mut conn_close = false;
        let mut conn_keep_alive = false;
        let mut expect_continue = false;
        for h in parsed.headers.iter() {
            let name = h.name.to_ascii_lowercase();
            let value = String::from_utf8_lossy(h.value).trim().to_owned();
            match name.as_str() {
                "content-length" => {
                    let len: usize = value
                        .parse()
                        .map_err(|_| ReadError::Bad(400, "Invalid Content-Length header."))?;
                    if content_length.is_some_and(|prev| prev != len) {
                        return Err(ReadError::Bad(400, "Conflicting Content-Length headers."));
                    }
                    content_length = Some(len);
                }
                "transfer-encoding" => {
                    has_te = true;
                    chunked = value
                        .rsplit(',')
                        .next()
                        .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
                }
                "connection" => {
                    for token in value.split(',') {
                        let token = token.trim();
                        conn_close |= token.eq_ignore_ascii_case("close");
                        conn_keep_alive |= token.eq_ignore_ascii_case("keep-alive");
                    }
                }
                "expect" => expect_continue = value.eq_ignore_ascii_case("100-continue"),
                _ => {}
            }
            out.push((name, value));
        }
        self.buf.advance(head_len);

        let framing = if has_te {
            if !chunked {
                return Err(ReadError::Bad(400, "Unsupported Transfer-Encoding."));
            }
            Framing::Chunked
        } else {
            match content_length {
                Some(len) if len > MAX_BODY_BYTES => {
                    return Err(ReadError::Bad(413, "Request body too large."))
                }
                Some(0) | None => Framing::Empty,
                Some(len) => Framing::Length(len),
            }
        };
        let keep_alive = if http11 {
            !conn_close
        } else {
            conn_keep_alive && !conn_close
        };
        let req = Request {
            method,
            path,
            headers: out,
            body: Bytes::new(),
            keep_alive,
            http11,
            received_at: Instant::now(),
        };
        Ok(Some((req, framing, expect_continue)))
    }

    async fn read_sized_body(&mut self, len: usize) -> Result<Bytes, ReadError> {
        if self.buf.len() < len {
            self.buf.reserve(len - self.buf.len());
        }
        while self.buf.len() < len {
            self.fill_some().await?;
        }
        if len <= COPY_BODY_LIMIT {
            let body = Bytes::copy_from_slice(&self.buf[..len]);
            self.buf.advance(len);
            Ok(body)
        } else {
            Ok(self.buf.split_to(len).freeze())
        }
    }

    async fn read_chunked_body(&mut self) -> Result<Bytes, ReadError> {
        let mut body = BytesMut::new();
        loop {
            let (line_len, size) = loop {
                match httparse::parse_chunk_size(&self.buf) {
                    Ok(httparse::Status::Complete(found)) => break found,
                    Ok(httparse::Status::Partial) => {
                        if self.buf.len() > MAX_CHUNK_LINE {
                            return Err(ReadError::Bad(400, "Invalid chunk size line."));
                        }
                        self.fill_some().await?;
                    }
                    Err(_) => return Err(ReadError::Bad(400, "Invalid chunk size.")),
                }
            };
            self.buf.advance(line_len);
            if size == 0 {
                self.skip_trailers().await?;
                return Ok(body.freeze());
            }
            let size = usize::try_from(size)
                .ok()
                .filter(|size| body.len().saturating_add(*size) <= MAX_BODY_BYTES)
                .ok_or(ReadError::Bad(413, "Request body too large."))?;
            body.reserve(size);
            let mut remaining = size;
            while remaining > 0 {
                if self.buf.is_empty() {
                    self.fill_some().await?;
                }
                let take = remaining.min(self.buf.len());
                body.extend_from_slice(&self.buf[..take]);
                self.buf.advance(take);
                remaining -= take;
            }
            while self.buf.len() < 2 {
                self.fill_some().await?;
            }
            if &self.buf[..2] != b"\r\n" {
                return Err(ReadError::Bad(400, "Chunk data not followed by CRLF."));
            }
            self.buf.advance(2);
        }
    }

    /// Consumes the (usually empty) trailer section after the last chunk.
    async fn skip_trailers(&mut self) -> Result<(), ReadError> {
        loop {
            match memchr::memmem::find(&self.buf, b"\r\n") {
                Some(0) => {
                    self.buf.advance(2);
                    return Ok(());
                }
                Some(end) => self.buf.advance(end + 2),
                None => {
                    if self.buf.len() > MAX_CHUNK_LINE {
                        return Err(ReadError::Bad(400, "Invalid chunked trailer."));
                    }
                    self.fill_some().await?;
                }
            }
        }
    }

    /// Sleeps for `dur`, watching the socket meanwhile. Returns `false` when
    /// the connection failed (so the caller can stop early). Bytes that
    /// arrive (a pipelined request) are kept for later. A half-close by the
    /// peer is remembered but does not abort the answer; a peer that is
    /// really gone makes the next write fail.
    async fn pause(&mut self, dur: Duration) -> bool {
        if dur.is_zero() {
            return true;
        }
        let sleep = tokio::time::sleep(dur);
        tokio::pin!(sleep);
        loop {
            if self.peer_eof || self.buf.len() >= MAX_BUFFERED_WHILE_BUSY {
                sleep.as_mut().await;
                return true;
            }
            tokio::select! {
                _ = sleep.as_mut() => return true,
                read = self.fill() => match read {
                    Ok(0) => self.peer_eof = true,
                    Ok(_) => {}
                    Err(_) => return false,
                },
            }
        }
    }

    /// Reads and discards until the peer closes the connection.
    async fn wait_for_close(&mut self) {
        self.buf.clear();
        loop {
            match self.fill().await {
                Ok(0) | Err(_) => return,
                Ok(_) => self.buf.clear(),
            }
        }
    }

    /// Half-closes and gives the peer a moment to close its side, so that
    /// unread data on our side does not turn the close into a reset.
    async fn close_gracefully(&mut self) {
        let _ = self.stream.shutdown().await;
        let _ = tokio::time::timeout(LINGER, self.wait_for_close()).await;
    }

    /// Aborts the connection with a TCP RST.
    fn reset(&self) {
        // SO_LINGER with a zero timeout makes close() send RST.
        let _ = self.stream.set_zero_linger();
    }

    /// Writes a reply. `Ok(true)` means the connection can be reused.
    async fn send(&mut self, req: &Request, reply: Reply) -> io::Result<bool> {
        if !self.pause(reply.latency).await {
            return Ok(false);
        }
        let head_only = req.method == "HEAD";
        match reply.body {
            Body::Json(_) => {
                if let Some(truncation) = reply.truncation {
                    self.send_truncated_unary(&reply, truncation, req).await?;
                    return Ok(false);
                }
                self.send_unary(&reply, req.keep_alive, head_only, req.received_at)
                    .await?;
                Ok(true)
            }
            Body::Sse(_) => self.send_sse(&reply, req).await,
        }
    }

    async fn send_unary(
        &mut self,
        reply: &Reply,
        keep_alive: bool,
        head_only: bool,
        received_at: Instant,
    ) -> io::Result<()> {
        let body: &[u8] = match &reply.body {
            Body::Json(body) => body,
            Body::Sse(_) => &[],
        };
        let mut out = Vec::with_capacity(512 + body.len());
        write_head(
            &mut out,
            reply,
            Framing::Length(body.len()),
            keep_alive,
            received_at,
        );
        if !head_only {
            out.extend_from_slice(body);
        }
        self.stream.write_all(&out).await?;
        self.stream.flush().await
    }

    /// Sends the head and part of a unary body, then drops the connection.
    async fn send_truncated_unary(
        &mut self,
        reply: &Reply,
        truncation: Truncation,
        req: &Request,
    ) -> io::Result<()> {
        let body: &[u8] = match &reply.body {
            Body::Json(body) => body,
            Body::Sse(_) => &[],
        };
        let mut out = Vec::with_capacity(512 + body.len());
        let half = &body[..body.len() / 2];
        if let Truncation::End { .. } = truncation {
            // A well-framed answer whose body is not the JSON it claims to be.
            write_head(
                &mut out,
                reply,
                Framing::Length(half.len()),
                req.keep_alive,
                req.received_at,
            );
            out.extend_from_slice(half);
            self.stream.write_all(&out).await?;
            return self.stream.flush().await;
        }
        write_head(
            &mut out,
            reply,
            Framing::Length(body.len()),
            req.keep_alive,
            req.received_at,
        );
        out.extend_from_slice(half);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        self.finish_truncation(truncation).await;
        Ok(())
    }

    async fn finish_truncation(&mut self, truncation: Truncation) {
        match truncation {
            Truncation::Close { .. } | Truncation::ErrorEvent { .. } => {
                let _ = self.stream.shutdown().await;
                self.wait_for_close_briefly().await;
            }
            Truncation::Reset { .. } => self.reset(),
            Truncation::End { .. } => {}
            Truncation::Stall { .. } => self.wait_for_close().await,
        }
    }

    async fn wait_for_close_briefly(&mut self) {
        let _ = tokio::time::timeout(LINGER, self.wait_for_close()).await;
    }

    /// Streams SSE events, one chunk per event. `Ok(true)` means the
    /// connection can be reused.
    async fn send_sse(&mut self, reply: &Reply, req: &Request) -> io::Result<bool> {
        let (count, event, error) = match &reply.body {
            Body::Sse(events) => (events.count, &events.event, events.error.as_deref()),
            Body::Json(_) => return Ok(false),
        };
        // HTTP/1.0 has no chunked encoding: the body ends when we close.
        let chunked = req.http11;
        let keep_alive = req.keep_alive && chunked;
        let framing = if chunked {
            Framing::Chunked
        } else {
            Framing::Empty
        };
        let mut out = Vec::with_capacity(512);
        write_head(&mut out, reply, framing, keep_alive, req.received_at);
        self.stream.write_all(&out).await?;
        self.stream.flush().await?;
        if req.method == "HEAD" {
            return Ok(keep_alive);
        }

        let limit = match reply.truncation {
            // Always leave out at least the final event.
            Some(t) => t.after_events().min(count.saturating_sub(1)),
            None => count,
        };
        for i in 0..limit {
            let delay = if i == 0 { reply.ttft } else { reply.itl };
            if !self.pause(delay).await {
                return Ok(false);
            }
            let event = event(i);
            out.clear();
            if chunked {
                write_chunk(&mut out, event.as_bytes());
            } else {
                out.extend_from_slice(event.as_bytes());
            }
            self.stream.write_all(&out).await?;
            self.stream.flush().await?;
        }
        match (reply.truncation, error) {
            (Some(Truncation::ErrorEvent { .. }), Some(error)) => {
                out.clear();
                if chunked {
                    write_chunk(&mut out, error.as_bytes());
                } else {
                    out.extend_from_slice(error.as_bytes());
                }
                self.stream.write_all(&out).await?;
                self.stream.flush().await?;
            }
            // A clean end of the body, without the stream's own final event.
            (Some(Truncation::End { .. }), _) => {}
            (Some(truncation), _) => {
                self.finish_truncation(truncation).await;
                return Ok(false);
            }
            (None, _) => {}
        }
        if chunked {
            self.stream.write_all(b"0\r\n\r\n").await?;
            self.stream.flush().await?;
        }
        Ok(keep_alive)
    }
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    /// No body (requests) / close-delimited body (responses).
    Empty,
    Length(usize),
    Chunked,
}

fn write_head(
    out: &mut Vec<u8>,
    reply: &Reply,
    framing: Framing,
    keep_alive: bool,
    received_at: Instant,
) {
    use std::io::Write as _;
    let reason = http::StatusCode::from_u16(reply.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    // Writing into a Vec cannot fail.
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", reply.status, reason);
    for (name, value) in &reply.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let elapsed = received_at.elapsed().as_millis();
    match reply.timing {
        TimingHeader::OpenAi => {
            let _ = write!(out, "openai-processing-ms: {elapsed}\r\n");
        }
        TimingHeader::ServerTiming => {
            let _ = write!(out, "server-timing: gfet4t7; dur={elapsed}\r\n");
        }
        TimingHeader::None => {}
    }
    match framing {
        Framing::Empty => {}
        Framing::Length(len) => {
            let _ = write!(out, "content-length: {len}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if keep_alive {
        out.extend_from_slice(b"connection: keep-alive\r\n\r\n");
    } else {
        out.extend_from_slice(b"connection: close\r\n\r\n");
    }
}

fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    use std::io::Write as _;
    let _ = write!(out, "{:x}\r\n", data.len());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}
