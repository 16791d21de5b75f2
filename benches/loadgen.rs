//! A small HTTP/1.1 load generator on raw tokio TCP.
//!
//! Each connection is kept alive and carries one request at a time. Bodies
//! framed by `Content-Length`, `Transfer-Encoding: chunked` (SSE) or by
//! connection close are all understood.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080/v1/chat/completions --concurrency 32 \
//!         --duration 10 --warmup 2 [--stream] [--header 'authorization: Bearer x']... \
//!         [--body-file F | --body JSON] [--rate R] [--json]
//! loadgen --url ... --stream --hold 1000 [--pid PID] [--json]
//! ```
//!
//! Closed loop (default): every connection sends its next request as soon as
//! the previous one finished. Open loop (`--rate R`): requests are scheduled
//! at a fixed total rate of R per second and latency is measured from the
//! scheduled start, so queueing caused by a slow server is not hidden.
//!
//! Hold mode (`--hold N`): N connections each send one request at the same
//! time; the report says how many responses were open (headers received,
//! body not finished) simultaneously. With `--pid`, the resident memory of
//! that process is sampled before and while all streams are open.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, sleep_until, timeout_at, Instant};

#[derive(Parser, Debug, Clone)]
#[command(name = "loadgen", about = "HTTP/1.1 keep-alive load generator")]
struct Args {
    /// Target URL (plain http only).
    #[arg(long)]
    url: String,
    /// Number of connections, each with one request in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Measured duration in seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds before measuring (results discarded).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Expect SSE responses: measure time to first body byte and require
    /// the stream to end with `data: [DONE]`.
    #[arg(long)]
    stream: bool,
    /// Extra request header, `name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Request body read from a file.
    #[arg(long, conflicts_with = "body")]
    body_file: Option<PathBuf>,
    /// Request body given inline.
    #[arg(long)]
    body: Option<String>,
    /// Model used in the default chat-completion body (when no body is given).
    #[arg(long, default_value = "mock-gpt")]
    model: String,
    /// HTTP method (default: POST when there is a body, which is always the
    /// case unless `--no-body`).
    #[arg(long)]
    method: Option<String>,
    /// Send no body at all (GET by default).
    #[arg(long, conflicts_with_all = ["body", "body_file"])]
    no_body: bool,
    /// Open-loop total request rate per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Per-request timeout in seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Hold mode: open N concurrent requests and keep them open together.
    #[arg(long)]
    hold: Option<usize>,
    /// Hold mode: sample VmRSS of this process before and while holding.
    #[arg(long)]
    pid: Option<u32>,
    /// Hold mode: milliseconds to wait after all streams are open before
    /// sampling memory.
    #[arg(long, default_value_t = 300)]
    settle_ms: u64,
    /// Print one JSON object line instead of text.
    #[arg(long)]
    json: bool,
}

// ---------------------------------------------------------------------------
// Target and request
// ---------------------------------------------------------------------------

struct Target {
    host_port: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("only http:// URLs are supported: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("missing host in URL: {url}"));
    }
    let host_port = if authority.rsplit_once(':').is_some_and(|(_, p)| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
    }) {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    Ok(Target {
        host_port,
        path: path.to_string(),
    })
}

fn build_request(args: &Args, target: &Target, authority: &str) -> Result<Vec<u8>, String> {
    let body: Option<Vec<u8>> = if args.no_body {
        None
    } else if let Some(b) = &args.body {
        Some(b.clone().into_bytes())
    } else if let Some(f) = &args.body_file {
        Some(std::fs::read(f).map_err(|e| format!("reading {}: {e}", f.display()))?)
    } else {
        let v = json!({
            "model": args.model,
            "messages": [{"role": "user", "content": "Say hello."}],
            "stream": args.stream,
        });
        Some(v.to_string().into_bytes())
    };
    let method = match &args.method {
        Some(m) => m.clone(),
        None if body.is_some() => "POST".to_string(),
        None => "GET".to_string(),
    };

    let mut has_ct = false;
    let mut extra = String::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("header must be `name: value`: {h}"))?;
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("empty header name: {h}"));
        }
        let lname = name.to_ascii_lowercase();
        if lname == "host" || lname == "content-length" {
            return Err(format!("header {name} is set by loadgen"));
        }
        if lname == "content-type" {
            has_ct = true;
        }
        extra.push_str(name);
        extra.push_str(": ");
        extra.push_str(value.trim());
        extra.push_str("\r\n");
    }

    let mut head = format!("{method} {} HTTP/1.1\r\nHost: {authority}\r\n", target.path);
    if let Some(b) = &body {
        if !has_ct {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    if args.stream {
        head.push_str("Accept: text/event-stream\r\n");
    }
    head.push_str(&extra);
    head.push_str("\r\n");
    let mut req = head.into_bytes();
    if let Some(b) = body {
        req.extend_from_slice(&b);
    }
    Ok(req)
}

// ---------------------------------------------------------------------------
// Connection and response parsing
// ---------------------------------------------------------------------------

const MAX_HEADERS: usize = 64;
const TAIL_LEN: usize = 32;

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
}

struct Head {
    status: u16,
    framing: Framing,
    close: bool,
}

#[derive(Clone, Copy)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

struct BodyResult {
    first_byte: Option<Instant>,
    done: Instant,
    ended_with_done: bool,
}

fn io_err(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

impl Conn {
    async fn connect(addr: std::net::SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: vec![0u8; 16 * 1024],
            pos: 0,
            len: 0,
        })
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.pos..self.len]
    }

    /// Reads more bytes into the buffer. Returns the number read (0 = EOF).
    async fn fill(&mut self) -> io::Result<usize> {
        if self.pos == self.len {
            self.pos = 0;
            self.len = 0;
        } else if self.len == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.len, 0);
                self.len -= self.pos;
                self.pos = 0;
            } else {
                let n = self.buf.len() * 2;
                self.buf.resize(n, 0);
            }
        }
        let n = self.stream.read(&mut self.buf[self.len..]).await?;
        self.len += n;
        Ok(n)
    }

    async fn fill_or_eof(&mut self) -> io::Result<()> {
        if self.fill().await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed mid-response",
            ));
        }
        Ok(())
    }

    async fn send(&mut self, req: &[u8]) -> io::Result<()> {
        self.stream.write_all(req).await
    }

    async fn read_head(&mut self, is_head_method: bool) -> io::Result<Head> {
        loop {
            let parsed = {
                let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                let mut resp = httparse::Response::new(&mut headers);
                match resp.parse(self.avail()) {
                    Ok(httparse::Status::Complete(n)) => {
                        let status = resp.code.unwrap_or(0);
                        let http10 = resp.version == Some(0);
                        let mut content_length: Option<u64> = None;
                        let mut chunked = false;
                        let mut close = http10;
                        for h in resp.headers.iter() {
                            if h.name.eq_ignore_ascii_case("content-length") {
                                let v = std::str::from_utf8(h.value)
                                    .ok()
                                    .and_then(|s| s.trim().parse::<u64>().ok())
                                    .ok_or_else(|| io_err("bad content-length"))?;
                                content_length = Some(v);
                            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                                chunked = contains_token(h.value, b"chunked");
                            } else if h.name.eq_ignore_ascii_case("connection") {
                                if contains_token(h.value, b"close") {
                                    close = true;
                                } else if contains_token(h.value, b"keep-alive") {
                                    close = false;
                                }
                            }
                        }
                        Some((n, status, content_length, chunked, close))
                    }
                    Ok(httparse::Status::Partial) => None,
                    Err(e) => return Err(io_err(&format!("bad response head: {e}"))),
                }
            };
            match parsed {
                Some((n, status, content_length, chunked, close)) => {
                    self.pos += n;
                    if (100..200).contains(&status) && status != 101 {
                        // Interim response: skip it and read the final one.
                        continue;
                    }
                    let framing = if is_head_method || status == 204 || status == 304 {
                        Framing::None
                    } else if chunked {
                        Framing::Chunked
                    } else if let Some(n) = content_length {
                        Framing::Length(n)
                    } else {
                        Framing::UntilClose
                    };
                    let close = close || matches!(framing, Framing::UntilClose);
                    return Ok(Head {
                        status,
                        framing,
                        close,
                    });
                }
                None => self.fill_or_eof().await?,
            }
        }
    }

    async fn read_body(&mut self, framing: Framing) -> io::Result<BodyResult> {
        let mut tail = Tail::default();
        let mut first_byte: Option<Instant> = None;
        match framing {
            Framing::None => {}
            Framing::Length(mut remaining) => {
                while remaining > 0 {
                    if self.pos == self.len {
                        self.fill_or_eof().await?;
                    }
                    let take =
                        (self.len - self.pos).min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    if take > 0 && first_byte.is_none() {
                        first_byte = Some(Instant::now());
                    }
                    tail.push(&self.buf[self.pos..self.pos + take]);
                    self.pos += take;
                    remaining -= take as u64;
                }
            }
            Framing::UntilClose => loop {
                if self.pos == self.len && self.fill().await? == 0 {
                    break;
                }
                if first_byte.is_none() {
                    first_byte = Some(Instant::now());
                }
                tail.push(&self.buf[self.pos..self.len]);
                self.pos = self.len;
            },
            Framing::Chunked => loop {
                let size = self.read_chunk_size().await?;
                if size == 0 {
                    self.skip_trailers().await?;
                    break;
                }
                let mut remaining = size;
                while remaining > 0 {
                    if self.pos == self.len {
                        self.fill_or_eof().await?;
                    }
                    let take = (self.len - self.pos).min(remaining);
                    if first_byte.is_none() {
                        first_byte = Some(Instant::now());
                    }
                    tail.push(&self.buf[self.pos..self.pos + take]);
                    self.pos += take;
                    remaining -= take;
                }
                self.expect_crlf().await?;
            },
        }
        Ok(BodyResult {
            first_byte,
            done: Instant::now(),
            ended_with_done: tail.ends_with_done(),
        })
    }

    /// Returns the next line (without CRLF) as a range into the buffer and
    /// consumes it.
    async fn read_line(&mut self) -> io::Result<(usize, usize)> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', self.avail()) {
                let start = self.pos;
                let mut end = self.pos + i;
                if end > start && self.buf[end - 1] == b'\r' {
                    end -= 1;
                }
                self.pos += i + 1;
                return Ok((start, end));
            }
            if self.len - self.pos > 8 * 1024 {
                return Err(io_err("line too long in chunked body"));
            }
            self.fill_or_eof().await?;
        }
    }

    async fn read_chunk_size(&mut self) -> io::Result<usize> {
        let (s, e) = self.read_line().await?;
        let line = &self.buf[s..e];
        let hex = match memchr::memchr(b';', line) {
            Some(i) => &line[..i],
            None => line,
        };
        let hex = std::str::from_utf8(hex)
            .map_err(|_| io_err("bad chunk size"))?
            .trim();
        usize::from_str_radix(hex, 16).map_err(|_| io_err("bad chunk size"))
    }

    async fn expect_crlf(&mut self) -> io::Result<()> {
        let (s, e) = self.read_line().await?;
        if s != e {
            return Err(io_err("missing CRLF after chunk"));
        }
        Ok(())
    }

    async fn skip_trailers(&mut self) -> io::Result<()> {
        loop {
            let (s, e) = self.read_line().await?;
            if s == e {
                return Ok(());
            }
        }
    }
}

fn contains_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// The last bytes of a body, used to check that an SSE stream finished with
/// `data: [DONE]`.
#[derive(Default)]
struct Tail {
    buf: [u8; TAIL_LEN],
    len: usize,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        if data.len() >= TAIL_LEN {
            self.buf.copy_from_slice(&data[data.len() - TAIL_LEN..]);
            self.len = TAIL_LEN;
        } else if self.len + data.len() <= TAIL_LEN {
            self.buf[self.len..self.len + data.len()].copy_from_slice(data);
            self.len += data.len();
        } else {
            let keep = TAIL_LEN - data.len();
            self.buf.copy_within(self.len - keep..self.len, 0);
            self.buf[keep..].copy_from_slice(data);
            self.len = TAIL_LEN;
        }
    }

    /// OpenAI-style streams end with `data: [DONE]`, Anthropic's with `message_stop`.
    fn ends_with_done(&self) -> bool {
        let t = self.buf[..self.len].trim_ascii_end();
        t.ends_with(b"data: [DONE]") || t.ends_with(b"{\"type\":\"message_stop\"}")
    }
}

// ---------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u64>,
    ttfb_us: Vec<u64>,
    errors_status: u64,
    errors_io: u64,
    errors_timeout: u64,
    errors_incomplete: u64,
    first_error: Option<String>,
}

impl Stats {
    fn errors(&self) -> u64 {
        self.errors_status + self.errors_io + self.errors_timeout + self.errors_incomplete
    }

    fn note(&mut self, msg: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(msg());
        }
    }

    fn merge(&mut self, mut o: Stats) {
        self.latencies_us.append(&mut o.latencies_us);
        self.ttfb_us.append(&mut o.ttfb_us);
        self.errors_status += o.errors_status;
        self.errors_io += o.errors_io;
        self.errors_timeout += o.errors_timeout;
        self.errors_incomplete += o.errors_incomplete;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    /// Records one finished exchange, classifying it as success or error.
    fn record(&mut self, stream: bool, start: Instant, status: u16, body: &BodyResult) -> bool {
        if !(200..300).contains(&status) {
            self.errors_status += 1;
            self.note(|| format!("HTTP status {status}"));
            return false;
        }
        if stream && !body.ended_with_done {
            self.errors_incomplete += 1;
            self.note(|| "stream did not end with `data: [DONE]`".to_string());
            return false;
        }
        self.latencies_us
            .push(body.done.saturating_duration_since(start).as_micros() as u64);
        if stream {
            let fb = body.first_byte.unwrap_or(body.done);
            self.ttfb_us
                .push(fb.saturating_duration_since(start).as_micros() as u64);
        }
        true
    }
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    Some(sorted[idx])
}

// ---------------------------------------------------------------------------
// Closed / open loop run
// ---------------------------------------------------------------------------

struct Shared {
    addr: std::net::SocketAddr,
    request: Vec<u8>,
    is_head: bool,
    stream: bool,
    rate: Option<f64>,
    req_timeout: Duration,
    t0: Instant,
    measure_start: Instant,
    end: Instant,
    ticket: AtomicU64,
}

struct Exchange {
    status: u16,
    body: BodyResult,
    close: bool,
}

async fn exchange(conn: &mut Conn, sh: &Shared) -> io::Result<Exchange> {
    conn.send(&sh.request).await?;
    let head = conn.read_head(sh.is_head).await?;
    let body = conn.read_body(head.framing).await?;
    Ok(Exchange {
        status: head.status,
        body,
        close: head.close,
    })
}

async fn worker(sh: Arc<Shared>) -> Stats {
    let mut stats = Stats::default();
    let mut conn: Option<Conn> = None;
    loop {
        let start = match sh.rate {
            Some(rate) => {
                let i = sh.ticket.fetch_add(1, Ordering::Relaxed);
                let at = sh.t0 + Duration::from_secs_f64(i as f64 / rate);
                if at >= sh.end {
                    break;
                }
                sleep_until(at).await;
                at
            }
            None => Instant::now(),
        };
        if start >= sh.end {
            break;
        }
        let measured = start >= sh.measure_start;
        let deadline = (start + sh.req_timeout).min(sh.end);

        let c = match conn.as_mut() {
            Some(c) => c,
            None => match timeout_at(deadline, Conn::connect(sh.addr)).await {
                Ok(Ok(c)) => conn.insert(c),
                Ok(Err(e)) => {
                    if measured {
                        stats.errors_io += 1;
                        stats.note(|| format!("connect: {e}"));
                    }
                    // Avoid spinning when the server is down.
                    sleep(Duration::from_millis(10)).await;
                    continue;
                }
                Err(_) => {
                    if Instant::now() >= sh.end {
                        break;
                    }
                    if measured {
                        stats.errors_timeout += 1;
                        stats.note(|| "connect timed out".to_string());
                    }
                    continue;
                }
            },
        };

        match timeout_at(deadline, exchange(c, &sh)).await {
            Ok(Ok(Exchange {
                status,
                body,
                close,
            })) => {
                // Only count exchanges that started and finished inside the
                // measured window.
                if measured && body.done <= sh.end {
                    stats.record(sh.stream, start, status, &body);
                }
                if close {
                    conn = None;
                }
            }
            Ok(Err(e)) => {
                if measured {
                    stats.errors_io += 1;
                    stats.note(|| format!("io: {e}"));
                }
                conn = None;
            }
            Err(_) => {
                conn = None;
                if Instant::now() >= sh.end {
                    // Cut off by the end of the run: not an error.
                    break;
                }
                if measured {
                    stats.errors_timeout += 1;
                    stats.note(|| "request timed out".to_string());
                }
            }
        }
    }
    stats
}

async fn run_load(args: Args, addr: std::net::SocketAddr, request: Vec<u8>) -> serde_json::Value {
    let is_head = args
        .method
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("HEAD"));
    let t0 = Instant::now();
    let measure_start = t0 + Duration::from_secs_f64(args.warmup.max(0.0));
    let end = measure_start + Duration::from_secs_f64(args.duration.max(0.0));
    let sh = Arc::new(Shared {
        addr,
        request,
        is_head,
        stream: args.stream,
        rate: args.rate.filter(|r| *r > 0.0),
        req_timeout: Duration::from_secs_f64(args.timeout.max(0.001)),
        t0,
        measure_start,
        end,
        ticket: AtomicU64::new(0),
    });
    let concurrency = args.concurrency.max(1);
    let mut handles = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        handles.push(tokio::spawn(worker(sh.clone())));
    }
    let mut stats = Stats::default();
    for h in handles {
        match h.await {
            Ok(s) => stats.merge(s),
            Err(e) => {
                stats.errors_io += 1;
                stats.note(|| format!("worker failed: {e}"));
            }
        }
    }
    let mode = if sh.rate.is_some() { "rate" } else { "closed" };
    summarize(&args, mode, stats, args.duration)
}

fn summarize(args: &Args, mode: &str, mut stats: Stats, secs: f64) -> serde_json::Value {
    stats.latencies_us.sort_unstable();
    stats.ttfb_us.sort_unstable();
    let completed = stats.latencies_us.len() as u64;
    let rps = if secs > 0.0 {
        completed as f64 / secs
    } else {
        0.0
    };
    let mean = stats
        .latencies_us
        .iter()
        .sum::<u64>()
        .checked_div(completed);
    let lat = &stats.latencies_us;
    let ttfb = &stats.ttfb_us;
    json!({
        "mode": mode,
        "url": args.url,
        "stream": args.stream,
        "concurrency": args.concurrency,
        "duration_s": secs,
        "rate_target": args.rate,
        "completed": completed,
        "errors": stats.errors(),
        "errors_status": stats.errors_status,
        "errors_io": stats.errors_io,
        "errors_timeout": stats.errors_timeout,
        "errors_incomplete": stats.errors_incomplete,
        "first_error": stats.first_error,
        "rps": (rps * 10.0).round() / 10.0,
        "lat_mean_us": mean,
        "lat_p50_us": percentile(lat, 50.0),
        "lat_p90_us": percentile(lat, 90.0),
        "lat_p99_us": percentile(lat, 99.0),
        "lat_max_us": lat.last().copied(),
        "ttfb_p50_us": percentile(ttfb, 50.0),
        "ttfb_p99_us": percentile(ttfb, 99.0),
    })
}

// ---------------------------------------------------------------------------
// Hold mode
// ---------------------------------------------------------------------------

struct HoldShared {
    addr: std::net::SocketAddr,
    request: Vec<u8>,
    is_head: bool,
    stream: bool,
    deadline: Instant,
    open: AtomicUsize,
    max_open: AtomicUsize,
    finished: AtomicUsize,
}

async fn hold_one(sh: Arc<HoldShared>) -> Stats {
    let mut stats = Stats::default();
    let start = Instant::now();
    let fut = async {
        let mut conn = Conn::connect(sh.addr).await?;
        conn.send(&sh.request).await?;
        let head = conn.read_head(sh.is_head).await?;
        // Only successful responses count as open streams.
        let ok = (200..300).contains(&head.status);
        if ok {
            let now_open = sh.open.fetch_add(1, Ordering::AcqRel) + 1;
            sh.max_open.fetch_max(now_open, Ordering::AcqRel);
        }
        let body = conn.read_body(head.framing).await;
        if ok {
            sh.open.fetch_sub(1, Ordering::AcqRel);
        }
        Ok::<_, io::Error>((head.status, body?))
    };
    match timeout_at(sh.deadline, fut).await {
        Ok(Ok((status, body))) => {
            stats.record(sh.stream, start, status, &body);
        }
        Ok(Err(e)) => {
            stats.errors_io += 1;
            stats.note(|| format!("io: {e}"));
        }
        Err(_) => {
            stats.errors_timeout += 1;
            stats.note(|| "request timed out".to_string());
        }
    }
    sh.finished.fetch_add(1, Ordering::AcqRel);
    stats
}

fn read_rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

async fn run_hold(
    args: Args,
    n: usize,
    addr: std::net::SocketAddr,
    request: Vec<u8>,
) -> serde_json::Value {
    let is_head = args
        .method
        .as_deref()
        .is_some_and(|m| m.eq_ignore_ascii_case("HEAD"));
    let rss_before = args.pid.and_then(read_rss_kb);
    let t0 = Instant::now();
    let sh = Arc::new(HoldShared {
        addr,
        request,
        is_head,
        stream: args.stream,
        deadline: t0 + Duration::from_secs_f64(args.timeout.max(0.001)),
        open: AtomicUsize::new(0),
        max_open: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
    });
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        handles.push(tokio::spawn(hold_one(sh.clone())));
    }

    // Wait until every request is open at once, or nothing more can open.
    let mut all_open_ms: Option<u128> = None;
    loop {
        let open = sh.open.load(Ordering::Acquire);
        let finished = sh.finished.load(Ordering::Acquire);
        if open >= n {
            all_open_ms = Some(t0.elapsed().as_millis());
            break;
        }
        if open + finished >= n || Instant::now() >= sh.deadline {
            break;
        }
        sleep(Duration::from_millis(5)).await;
    }
    sleep(Duration::from_millis(args.settle_ms)).await;
    let open_at_sample = sh.open.load(Ordering::Acquire);
    let rss_during = args.pid.and_then(read_rss_kb);
    eprintln!("HOLDING {open_at_sample}");

    let mut stats = Stats::default();
    for h in handles {
        match h.await {
            Ok(s) => stats.merge(s),
            Err(e) => {
                stats.errors_io += 1;
                stats.note(|| format!("task failed: {e}"));
            }
        }
    }
    let secs = (t0.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    let mut v = summarize(&args, "hold", stats, secs);
    let per_stream_kb = match (rss_before, rss_during) {
        (Some(b), Some(d)) if open_at_sample > 0 => {
            Some(((d as f64 - b as f64) / open_at_sample as f64 * 100.0).round() / 100.0)
        }
        _ => None,
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("concurrency".into(), json!(n));
        obj.insert("hold_target".into(), json!(n));
        obj.insert(
            "max_open".into(),
            json!(sh.max_open.load(Ordering::Acquire)),
        );
        obj.insert("open_at_sample".into(), json!(open_at_sample));
        obj.insert("time_to_all_open_ms".into(), json!(all_open_ms));
        obj.insert("rss_before_kb".into(), json!(rss_before));
        obj.insert("rss_during_kb".into(), json!(rss_during));
        obj.insert("per_stream_kb".into(), json!(per_stream_kb));
    }
    v
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

fn fmt_opt(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}

fn print_text(v: &serde_json::Value) {
    let g = |k: &str| fmt_opt(&v[k]);
    println!(
        "loadgen {} (mode {}, stream {}, concurrency {}, {} s)",
        v["url"].as_str().unwrap_or(""),
        v["mode"].as_str().unwrap_or(""),
        g("stream"),
        g("concurrency"),
        g("duration_s"),
    );
    if !v["rate_target"].is_null() {
        println!("  target rate:   {} req/s", g("rate_target"));
    }
    println!("  completed:     {}", g("completed"));
    println!(
        "  errors:        {} (status {}, io {}, timeout {}, incomplete stream {})",
        g("errors"),
        g("errors_status"),
        g("errors_io"),
        g("errors_timeout"),
        g("errors_incomplete"),
    );
    if let Some(e) = v["first_error"].as_str() {
        println!("  first error:   {e}");
    }
    println!("  requests/s:    {}", g("rps"));
    println!(
        "  latency us:    p50 {}  p90 {}  p99 {}  max {}  mean {}",
        g("lat_p50_us"),
        g("lat_p90_us"),
        g("lat_p99_us"),
        g("lat_max_us"),
        g("lat_mean_us"),
    );
    if v["stream"].as_bool() == Some(true) {
        println!(
            "  ttfb us:       p50 {}  p99 {}",
            g("ttfb_p50_us"),
            g("ttfb_p99_us")
        );
    }
    if v["mode"] == "hold" {
        println!(
            "  hold:          target {}, max open {}, open at sample {}, all open after {} ms",
            g("hold_target"),
            g("max_open"),
            g("open_at_sample"),
            g("time_to_all_open_ms"),
        );
        if !v["rss_before_kb"].is_null() {
            println!(
                "  rss kB:        before {}, during {}, per open stream {}",
                g("rss_before_kb"),
                g("rss_during_kb"),
                g("per_stream_kb"),
            );
        }
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = real_main(args) {
        eprintln!("loadgen: {e}");
        std::process::exit(2);
    }
}

fn real_main(args: Args) -> Result<(), String> {
    let target = parse_url(&args.url)?;
    let authority = args
        .url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let request = build_request(&args, &target, &authority)?;

    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()
    }
    .map_err(|e| format!("runtime: {e}"))?;

    let json_out = args.json;
    let result = rt.block_on(async move {
        let addr = tokio::net::lookup_host(target.host_port.as_str())
            .await
            .map_err(|e| format!("resolving {}: {e}", target.host_port))?
            .next()
            .ok_or_else(|| format!("no address for {}", target.host_port))?;
        let v = match args.hold {
            Some(n) => run_hold(args, n.max(1), addr, request).await,
            None => run_load(args, addr, request).await,
        };
        Ok::<_, String>(v)
    })?;

    if json_out {
        println!("{result}");
    } else {
        print_text(&result);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_detects_done() {
        let mut t = Tail::default();
        t.push(b"data: {\"x\":1}\n\n");
        t.push(b"data: [DO");
        t.push(b"NE]\n\n");
        assert!(t.ends_with_done());
        t.push(&[b'a'; 100]);
        assert!(!t.ends_with_done());
    }

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn url_parsing() {
        let t = parse_url("http://127.0.0.1:8080/v1/chat").expect("valid url");
        assert_eq!(t.host_port, "127.0.0.1:8080");
        assert_eq!(t.path, "/v1/chat");
        let t = parse_url("http://localhost").expect("valid url");
        assert_eq!(t.host_port, "localhost:80");
        assert_eq!(t.path, "/");
        assert!(parse_url("https://x").is_err());
    }
}
