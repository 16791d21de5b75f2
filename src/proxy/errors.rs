//! Pingora errors as gateway errors (status and code), routing classes and metric labels.

use super::*;

/// The metric label of a routing error class.
pub(super) fn class_label(c: ErrorClass) -> &'static str {
    match c {
        ErrorClass::Status(429) => "rate_limit",
        ErrorClass::Status(s) if s >= 500 => "5xx",
        ErrorClass::Status(_) => "4xx",
        ErrorClass::Timeout => "timeout",
        ErrorClass::Connect => "connect",
    }
}

impl Gateway {
    /// Classifies a Pingora error as a gateway error (status + code).
    pub(super) fn classify(e: &Error) -> Option<GatewayError> {
        use ErrorType::*;
        let (code, msg) = match e.etype() {
            HTTPStatus(c) if *c == 413 => (ErrorCode::PayloadTooLarge, "request body too large"),
            HTTPStatus(c) if *c < 500 => (ErrorCode::InvalidRequest, "invalid request"),
            ConnectTimedout => (
                ErrorCode::UpstreamTimeout,
                "connecting to the provider timed out",
            ),
            ReadTimedout if e.esource() == &ErrorSource::Upstream => (
                ErrorCode::UpstreamTimeout,
                "the provider did not answer in time",
            ),
            WriteTimedout if e.esource() == &ErrorSource::Upstream => (
                ErrorCode::UpstreamTimeout,
                "sending to the provider timed out",
            ),
            ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
            | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | BindError
            | SocketError => (
                ErrorCode::UpstreamUnreachable,
                "the provider could not be reached",
            ),
            _ => match e.esource() {
                ErrorSource::Upstream => {
                    (ErrorCode::UpstreamError, "the provider failed to answer")
                }
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed | ReadTimedout | WriteTimedout => {
                        return None
                    }
                    _ => (ErrorCode::InvalidRequest, "malformed request"),
                },
                _ => (ErrorCode::InternalError, "internal error"),
            },
        };
        Some(GatewayError::new(code, msg))
    }

    /// The routing class of a Pingora error before any response: what `failoverOn` matches.
    /// A connection that dies before answering (reset, closed) counts as `connect`.
    pub(super) fn routing_class(e: &Error) -> Option<ErrorClass> {
        use ErrorType::*;
        match e.etype() {
            ConnectTimedout | TLSHandshakeTimedout => Some(ErrorClass::Timeout),
            ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
                Some(ErrorClass::Timeout)
            }
            ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
            | TLSHandshakeFailure | InvalidCert | SocketError | BindError => {
                Some(ErrorClass::Connect)
            }
            ConnectionClosed | ReadError | WriteError if e.esource() == &ErrorSource::Upstream => {
                Some(ErrorClass::Connect)
            }
            _ => None,
        }
    }

    pub(super) fn error_class(e: &Error) -> &'static str {
        use ErrorType::*;
        if let Some(c) = Self::routing_class(e) {
            return class_label(c);
        }
        match e.etype() {
            ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => "timeout",
            ConnectRefused | ConnectNoRoute | ConnectError | TLSHandshakeFailure | InvalidCert
            | SocketError | BindError | ConnectProxyFailure => "connect",
            HTTPStatus(s) if *s == 429 => "rate_limit",
            HTTPStatus(s) if *s >= 500 => "5xx",
            _ => "io",
        }
    }
}

impl Gateway {
    /// A connect (or TLS) failure: nothing was sent; the next deployment if the plan allows.
    pub(super) fn connect_failed(ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        Self::end_attempt(ctx, "error", Some(Self::error_class(&e)), None);
        let class = Self::routing_class(&e).unwrap_or(ErrorClass::Connect);
        if ctx.body.is_some() && Self::fail_over(ctx, class, None) {
            e.set_retry(true);
        }
        e
    }

    /// An error after connecting: retry (our own status-driven retry, a replay on a pooled
    /// connection the provider had closed, or failover before any byte reached the client) or
    /// give up.
    pub(super) fn proxy_failed(
        peer: &HttpPeer,
        s: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        Self::end_attempt(ctx, "error", Some(Self::error_class(&e)), None);
        if std::mem::take(&mut ctx.attempt.retry_pending) {
            // Our own status-driven retry (failover or another credential), decided in
            // `upstream_response_filter` before anything reached the client.
            e.set_retry(true);
        } else if s.response_written().is_some() || ctx.body.is_none() {
            e.set_retry(false);
        } else if matches!(e.retry, RetryType::ReusedOnly) && client_reused {
            // A pooled connection the provider had closed: replay the kept body, same target,
            // unless the operator turned replays off (a provider that did process the first
            // send generates twice).
            e.retry
                .decide_reuse(ctx.snap.config.server.retry_on_reused_connection);
        } else if let Some(class) = Self::routing_class(&e) {
            // Timed out or died before answering: the next deployment, if the plan allows.
            let over = Self::fail_over(ctx, class, None);
            e.set_retry(over);
        } else {
            e.set_retry(false);
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(t: ErrorType, src: ErrorSource) -> Box<Error> {
        let mut e = Error::new(t);
        e.esource = src;
        e
    }

    #[test]
    fn pingora_errors_become_the_gateways_codes() {
        let code = |t, src| Gateway::classify(&err(t, src)).map(|g| (g.status(), g.code.as_str()));
        use ErrorSource::*;
        assert_eq!(
            code(ErrorType::ConnectTimedout, Upstream),
            Some((504, "upstream_timeout"))
        );
        assert_eq!(
            code(ErrorType::ReadTimedout, Upstream),
            Some((504, "upstream_timeout"))
        );
        assert_eq!(
            code(ErrorType::ConnectRefused, Upstream),
            Some((502, "upstream_unreachable"))
        );
        assert_eq!(
            code(ErrorType::ConnectionClosed, Upstream),
            Some((502, "upstream_error"))
        );
        assert_eq!(
            code(ErrorType::HTTPStatus(413), Downstream),
            Some((413, "payload_too_large"))
        );
        // A client that is gone gets nothing.
        assert_eq!(code(ErrorType::ConnectionClosed, Downstream), None);
        assert_eq!(code(ErrorType::WriteError, Downstream), None);
    }

    #[test]
    fn routing_classes_and_labels() {
        use ErrorSource::*;
        let class = |t, src| Gateway::routing_class(&err(t, src));
        assert_eq!(
            class(ErrorType::ConnectTimedout, Upstream),
            Some(ErrorClass::Timeout)
        );
        assert_eq!(
            class(ErrorType::ConnectRefused, Upstream),
            Some(ErrorClass::Connect)
        );
        // A reset before the answer counts as connect; the same on the client side is nothing.
        assert_eq!(
            class(ErrorType::ConnectionClosed, Upstream),
            Some(ErrorClass::Connect)
        );
        assert_eq!(class(ErrorType::ConnectionClosed, Downstream), None);
        assert_eq!(class_label(ErrorClass::Status(429)), "rate_limit");
        assert_eq!(class_label(ErrorClass::Status(503)), "5xx");
        assert_eq!(
            Gateway::error_class(&err(ErrorType::HTTPStatus(429), Upstream)),
            "rate_limit"
        );
    }
}
