//! The data plane: Wharf's `ProxyHttp` implementation, as a phase chart. Each phase is a few
//! lines that delegate to the module named after its concern.
//!
//! ```text
//! request_filter           admit.rs   request ids → route → auth → bounded body read → decode →
//!                                     model, grant, family → limits → plan → bind [or answer]
//! upstream_peer            bind.rs    the plan's next target on failover; address, TLS, timeouts
//! upstream_request_filter  bind.rs    path, Host, provider credential, strip client credentials, CL
//! request_body_filter      (here)     emit the rewritten body (replayable, any size)
//! upstream_response_filter answer.rs  end the attempt, status retry, mask credentials, choose the tap
//! response_filter          answer.rs  request ids, x-wharf-* headers
//! response_body_filter     answer.rs  mask, filters, usage tap (tap.rs) or unified translation
//! fail_to_connect          errors.rs  failover before anything was sent
//! error_while_proxy        errors.rs  replay, failover or give up
//! fail_to_proxy            reply.rs   Pingora errors → the family's JSON error or final SSE event
//! logging                  record.rs  exactly one usage record, governance, metrics, access log
//! ```
//!
//! `ctx.rs` holds the request context; `reply.rs` the one header builder of the gateway's own
//! answers; `routes.rs`, `body.rs`, `failover.rs` and `tap.rs` are pure and unit-tested.

pub mod body;
pub mod failover;
pub mod mcp;
pub mod routes;
pub mod tap;

mod admit;
mod answer;
mod bind;
mod ctx;
mod errors;
mod record;
mod reply;

use admit::*;
pub use ctx::Ctx;
use ctx::Unified;
use errors::*;
use reply::*;

use crate::config::{Model, ModelType, ProviderKind, VirtualKey};
use crate::control::{Snapshot, State};
use crate::endpoints;
use crate::error::{ErrorCode, GatewayError};
use crate::keys::{self, KeyHash};
use crate::metrics;
use crate::respond::{self, Reply};
use crate::routing::ErrorClass;
use crate::translate;
use crate::usage::{Attempt, Tokens, UsageRecord, UsageSource};
use async_trait::async_trait;
use body::Inspected;
use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{ErrorSource, ErrorType, RetryType};
use routes::{Family, Route};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tap::{ResponseTap, TapMode, WireFormat};

/// The gateway service.
pub struct Gateway {
    pub state: Arc<State>,
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.state.current())
    }

    async fn request_filter(&self, s: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let t = Instant::now();
        self.begin(s, ctx);
        let r = self.admit(s, ctx).await;
        ctx.overhead += t.elapsed();
        r
    }

    async fn upstream_peer(&self, s: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        self.peer(s, ctx).await
    }

    async fn upstream_request_filter(
        &self,
        _s: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let t = Instant::now();
        let r = Self::upstream_head(req, ctx);
        ctx.overhead += t.elapsed();
        r
    }

    async fn request_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = &ctx.body {
            // Hold back whatever the client session replays; send the whole rewritten body at
            // the end (never `None` before the end: that would end the upstream body).
            *body = Some(if end_of_stream {
                b.clone()
            } else {
                Bytes::new()
            });
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _s: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let t = Instant::now();
        let r = self.upstream_head_in(resp, ctx);
        ctx.overhead += t.elapsed();
        r
    }

    async fn response_filter(
        &self,
        _s: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        Self::client_head(resp, ctx)
    }

    fn response_body_filter(
        &self,
        _s: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let t = Instant::now();
        self.body_out(body, end_of_stream, ctx);
        ctx.overhead += t.elapsed();
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _s: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        Self::connect_failed(ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        s: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        Self::proxy_failed(peer, s, e, ctx, client_reused)
    }

    async fn fail_to_proxy(&self, s: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        Self::answer_failure(s, e, ctx).await
    }

    async fn logging(&self, s: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        self.finish(s, e, ctx).await
    }

    fn request_summary(&self, s: &Session, ctx: &Ctx) -> String {
        // Pingora logs this with errors: never the query string (it may carry `?key=`).
        format!(
            "{} {} request_id={}",
            s.req_header().method,
            s.req_header().uri.path(),
            ctx.request_id
        )
    }

    fn suppress_error_log(&self, _s: &Session, _ctx: &Ctx, e: &Error) -> bool {
        // Vanished clients are an outcome in the usage record, not an error.
        e.esource() == &ErrorSource::Downstream
    }
}
