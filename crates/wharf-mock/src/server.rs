//! The HTTP/1.1 server: hyper parses requests (Content-Length and chunked
//! bodies, `Expect: 100-continue`, pipelining, keep-alive) and writes the
//! answers (unary bodies with Content-Length, streams with chunked
//! transfer-encoding, one flush per event). Faults that break HTTP go
//! through the raw layer (`raw.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{StatusCode, Version};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Sleep;

use super::common::{Action, Body, Reply, SseEvents, TimingHeader, Truncation};
use super::raw::{self, Ending, Takeover};
use super::request::Request;
use super::{openai, router};
use super::{Shared, MAX_BODY_BYTES};

/// Serves one TCP connection until it closes.
pub(crate) async fn serve(stream: TcpStream, shared: Arc<Shared>) {
    // Best effort: without TCP_NODELAY SSE events could sit in Nagle's buffer.
    let _ = stream.set_nodelay(true);
    let conn = Arc::new(raw::Conn::default());
    let io = TokioIo::new(raw::Io::new(stream, Arc::clone(&conn)));
    let service = Service {
        shared,
        conn: Arc::clone(&conn),
    };
    let mut http = http1::Builder::new()
        // A peer that half-closes may still read its answer.
        .half_close(true)
        .auto_date_header(false)
        // One contiguous write per flush (head and body, or a chunk with its
        // framing): cheaper than writev for the small pieces the mock sends.
        .writev(false)
        .serve_connection(io, service);
    // Without shutdown: the raw layer ends the connection (gracefully, or
    // the way a fault asked for) on the socket hyper hands back.
    let _ = std::future::poll_fn(|cx| http.poll_without_shutdown(cx)).await;
    let stream = http.into_parts().io.into_inner().into_stream();
    raw::finish(stream, conn.ending()).await;
}

struct Service {
    shared: Arc<Shared>,
    conn: Arc<raw::Conn>,
}

type Answer = Result<http::Response<ReplyBody>, Takeover>;

impl hyper::service::Service<http::Request<Incoming>> for Service {
    type Response = http::Response<ReplyBody>;
    type Error = Takeover;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        Box::pin(answer(
            Arc::clone(&self.shared),
            Arc::clone(&self.conn),
            req,
        ))
    }
}

/// What the answer's head needs to know about the request.
struct Meta {
    received_at: Instant,
    keep_alive: bool,
    /// HTTP/1.1 (chunked responses allowed) rather than HTTP/1.0.
    http11: bool,
}

async fn answer(shared: Arc<Shared>, conn: Arc<raw::Conn>, req: http::Request<Incoming>) -> Answer {
    let received_at = Instant::now();
    let (parts, incoming) = req.into_parts();
    let http11 = parts.version == Version::HTTP_11;
    let keep_alive = keep_alive(&parts.headers, http11);
    let body = match read_body(incoming).await {
        Ok(body) => body,
        Err((status, message)) => {
            let meta = Meta {
                received_at,
                keep_alive: false,
                http11,
            };
            return Ok(respond(
                openai::protocol_error(status, message),
                &meta,
                conn,
            ));
        }
    };
    let path = match parts.uri.path_and_query() {
        // Origin form, as clients send it.
        Some(pq) if parts.uri.scheme().is_none() => pq.as_str().to_owned(),
        Some(_) => parts.uri.to_string(),
        None if parts.uri.scheme().is_some() => parts.uri.to_string(),
        None => "/".to_owned(),
    };
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).trim().to_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let req = Request {
        method: parts.method.as_str().to_owned(),
        path,
        headers,
        body,
    };
    shared.record(&req);
    let meta = Meta {
        received_at,
        keep_alive,
        http11,
    };
    match router::handle(&shared.cfg, &req) {
        Action::Reset => Err(conn.take_over(Ending::Reset).await),
        Action::Close => Err(conn.take_over(Ending::Close).await),
        Action::Hang => Err(conn.take_over(Ending::Silence).await),
        Action::Reply(reply) => {
            if !reply.latency.is_zero() {
                tokio::time::sleep(reply.latency).await;
            }
            // hyper leaves the body out of answers to HEAD.
            Ok(respond(reply, &meta, conn))
        }
    }
}

fn keep_alive(headers: &http::HeaderMap, http11: bool) -> bool {
    let (mut close, mut keep) = (false, false);
    for value in headers.get_all(CONNECTION) {
        for token in value.to_str().unwrap_or_default().split(',') {
            let token = token.trim();
            close |= token.eq_ignore_ascii_case("close");
            keep |= token.eq_ignore_ascii_case("keep-alive");
        }
    }
    !close && (http11 || keep)
}

/// The whole request body; `Err` is the status and message of the answer.
async fn read_body(mut incoming: Incoming) -> Result<Bytes, (u16, &'static str)> {
    use http_body::Body as _;
    const TOO_LARGE: (u16, &str) = (413, "Request body too large.");
    if incoming.size_hint().lower() > MAX_BODY_BYTES as u64 {
        return Err(TOO_LARGE);
    }
    // Most bodies arrive in one piece: keep it without copying.
    let mut first: Option<Bytes> = None;
    let mut rest = BytesMut::new();
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|_| (400, "Malformed request body."))?;
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        let so_far = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if so_far + data.len() > MAX_BODY_BYTES {
            return Err(TOO_LARGE);
        }
        match &first {
            None => first = Some(data),
            Some(head) => {
                if rest.is_empty() {
                    rest.extend_from_slice(head);
                }
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(if rest.is_empty() {
        first.unwrap_or_default()
    } else {
        rest.freeze()
    })
}

/// The response hyper writes for a reply.
fn respond(reply: Reply, meta: &Meta, conn: Arc<raw::Conn>) -> http::Response<ReplyBody> {
    let Reply {
        status,
        headers,
        body,
        ttft,
        itl,
        truncation,
        timing,
        ..
    } = reply;
    let mut content_length = None;
    let mut keep_alive = meta.keep_alive;
    let body = match body {
        Body::Json(bytes) => match truncation {
            None => ReplyBody::Full(Some(Bytes::from(bytes))),
            // A well-framed answer whose body is not the JSON it claims to be.
            Some(Truncation::End { .. }) => {
                let mut bytes = bytes;
                bytes.truncate(bytes.len() / 2);
                ReplyBody::Full(Some(Bytes::from(bytes)))
            }
            // The head promises the whole body; half of it comes.
            Some(cut) => {
                content_length = Some(bytes.len());
                let mut bytes = bytes;
                bytes.truncate(bytes.len() / 2);
                ReplyBody::Stream(Box::new(Stream::unary_cut(bytes, cut, conn)))
            }
        },
        Body::Sse(events) => {
            // HTTP/1.0 has no chunked encoding: the body ends when we close.
            keep_alive &= meta.http11;
            ReplyBody::Stream(Box::new(Stream::events(
                events, ttft, itl, truncation, conn,
            )))
        }
    };

    let resp_body_len = match &body {
        ReplyBody::Full(bytes) => Some(bytes.as_ref().map_or(0, Bytes::len)),
        ReplyBody::Stream(_) => content_length,
    };
    let mut resp = http::Response::new(body);
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if code.canonical_reason().is_none() {
        resp.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b"Unknown"));
    }
    *resp.status_mut() = code;
    let map = resp.headers_mut();
    map.reserve(headers.len() + 3);
    for (name, value) in headers {
        // Names are the families' literals; values come from requests only
        // as header values, so both are valid (anything else is dropped).
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            map.append(name, value);
        }
    }
    let elapsed = meta.received_at.elapsed().as_millis();
    match timing {
        TimingHeader::OpenAi => {
            map.append(
                HeaderName::from_static("openai-processing-ms"),
                HeaderValue::from(elapsed as u64),
            );
        }
        TimingHeader::ServerTiming => {
            if let Ok(value) = HeaderValue::try_from(format!("gfet4t7; dur={elapsed}")) {
                map.append(HeaderName::from_static("server-timing"), value);
            }
        }
        TimingHeader::None => {}
    }
    // The framing headers, written as the head always had them (hyper would
    // otherwise add its own after `connection`).
    match (&resp_body_len, meta.http11) {
        (Some(len), _) => {
            map.insert(CONTENT_LENGTH, HeaderValue::from(*len));
        }
        (None, true) => {
            map.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        }
        // HTTP/1.0 has no chunked encoding: the body ends when we close.
        (None, false) => {}
    }
    map.insert(
        CONNECTION,
        HeaderValue::from_static(if keep_alive { "keep-alive" } else { "close" }),
    );
    resp
}

/// A response body: whole, or produced piece by piece.
pub(crate) enum ReplyBody {
    Full(Option<Bytes>),
    Stream(Box<Stream>),
}

impl http_body::Body for ReplyBody {
    type Data = Bytes;
    type Error = Takeover;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Takeover>>> {
        match self.get_mut() {
            ReplyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ReplyBody::Stream(stream) => stream.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReplyBody::Full(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            ReplyBody::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReplyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            ReplyBody::Stream(_) => SizeHint::default(),
        }
    }
}

/// How a streamed body ends after its last piece.
enum Tail {
    /// The end of the body (the terminating chunk).
    End,
    /// The family's mid-stream error event, then the end of the body.
    Error(String),
    /// No end: the raw layer ends the connection.
    Raw(Ending),
}

/// A body sent in pieces, each after its delay and flushed on its own.
pub(crate) struct Stream {
    pieces: Pieces,
    next: usize,
    limit: usize,
    ttft: Duration,
    itl: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The last piece still has to be flushed before the next is produced.
    unflushed: bool,
    tail: Option<Tail>,
    /// The flush count to wait past before a raw ending.
    draining: Option<u64>,
    conn: Arc<raw::Conn>,
}

enum Pieces {
    Events(SseEvents),
    /// Half a unary body.
    Once(Option<Bytes>),
}

impl Stream {
    fn events(
        events: SseEvents,
        ttft: Duration,
        itl: Duration,
        truncation: Option<Truncation>,
        conn: Arc<raw::Conn>,
    ) -> Stream {
        let limit = match truncation {
            // Always leave out at least the final event.
            Some(t) => t.after_events().min(events.count.saturating_sub(1)),
            None => events.count,
        };
        let tail = match (truncation, events.error.clone()) {
            (None, _) | (Some(Truncation::End { .. }), _) => Tail::End,
            (Some(Truncation::ErrorEvent { .. }), Some(error)) => Tail::Error(error),
            (Some(cut), _) => Tail::Raw(raw_ending(cut)),
        };
        Stream {
            pieces: Pieces::Events(events),
            next: 0,
            limit,
            ttft,
            itl,
            sleep: None,
            unflushed: false,
            tail: Some(tail),
            draining: None,
            conn,
        }
    }

    fn unary_cut(half: Vec<u8>, cut: Truncation, conn: Arc<raw::Conn>) -> Stream {
        Stream {
            pieces: Pieces::Once(Some(Bytes::from(half))),
            next: 0,
            limit: 1,
            ttft: Duration::ZERO,
            itl: Duration::ZERO,
            sleep: None,
            unflushed: false,
            tail: Some(Tail::Raw(raw_ending(cut))),
            draining: None,
            conn,
        }
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Takeover>>> {
        if self.unflushed {
            // Hand control back once so that hyper writes the piece out.
            self.unflushed = false;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.next < self.limit {
            let delay = if self.next == 0 { self.ttft } else { self.itl };
            if !delay.is_zero() {
                let sleep = self
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
                std::task::ready!(sleep.as_mut().poll(cx));
                self.sleep = None;
            }
            let piece = match &mut self.pieces {
                Pieces::Events(events) => Bytes::from((events.event)(self.next)),
                Pieces::Once(half) => half.take().unwrap_or_default(),
            };
            self.next += 1;
            self.unflushed = true;
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match self.tail.take() {
            None | Some(Tail::End) => Poll::Ready(None),
            Some(Tail::Error(error)) => {
                self.unflushed = true;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(error)))))
            }
            Some(Tail::Raw(ending)) => {
                let count = *self.draining.get_or_insert_with(|| self.conn.flush_count());
                if self.conn.flushed_since(count, cx).is_pending() {
                    self.tail = Some(Tail::Raw(ending));
                    return Poll::Pending;
                }
                self.conn.set_ending(ending);
                Poll::Ready(Some(Err(Takeover)))
            }
        }
    }
}

fn raw_ending(cut: Truncation) -> Ending {
    match cut {
        Truncation::Reset { .. } => Ending::Reset,
        Truncation::Stall { .. } => Ending::Silence,
        // An error event the family does not have, or a clean end that
        // cannot be: the stream is cut off.
        Truncation::Close { .. } | Truncation::ErrorEvent { .. } | Truncation::End { .. } => {
            Ending::Close
        }
    }
}
