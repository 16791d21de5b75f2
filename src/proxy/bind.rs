//! Binding a request to a target: its upstream URI and rewritten body, the next target of
//! the failover plan, and the decision to retry on an upstream status.

use super::*;

/// The upstream path and query for `route` on `model`'s provider.
pub(super) fn upstream_uri(
    model: &Model,
    route: Route,
    client_query: Option<&str>,
) -> Result<http::Uri, GatewayError> {
    let query = client_query.and_then(keys::strip_key_param);
    if query.is_some() {
        return build_upstream_uri(model, route, query);
    }
    // The common case (no client query): built once per model and route.
    if let Some(u) = model
        .uri_cache
        .read()
        .ok()
        .and_then(|c| c.get(route.name()).cloned())
    {
        return Ok(u);
    }
    let u = build_upstream_uri(model, route, None)?;
    if let Ok(mut c) = model.uri_cache.write() {
        c.insert(route.name(), u.clone());
    }
    Ok(u)
}

pub(super) fn build_upstream_uri(
    model: &Model,
    route: Route,
    mut query: Option<String>,
) -> Result<http::Uri, GatewayError> {
    let p = &model.provider;
    let path = if p.kind == ProviderKind::AzureOpenAi {
        let q = format!(
            "api-version={}",
            p.api_version.as_deref().unwrap_or("2024-10-21")
        );
        query = Some(match query {
            Some(cq) if !cq.contains("api-version=") => format!("{q}&{cq}"),
            Some(cq) => cq,
            None => q,
        });
        match route {
            Route::Responses => format!("{}/openai/responses", p.base_path),
            _ => format!(
                "{}/openai/deployments/{}{}",
                p.base_path,
                model.slug,
                route.upstream_suffix()
            ),
        }
    } else if let Route::Vllm(op) = route {
        let (under_api_root, suffix) = op.upstream_path();
        let root = if under_api_root {
            p.base_path.as_str()
        } else {
            p.base_path.strip_suffix("/v1").unwrap_or(&p.base_path)
        };
        format!("{root}{suffix}")
    } else if route.family() == Family::Gemini {
        format!(
            "{}/models/{}{}",
            p.base_path,
            model.slug,
            route.upstream_suffix()
        )
    } else {
        format!("{}{}", p.base_path, route.upstream_suffix())
    };
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    pq.parse::<http::Uri>()
        .map_err(|_| GatewayError::new(ErrorCode::InvalidRequest, "cannot build the upstream URL"))
}

impl Gateway {
    /// Points the request at `target`: its upstream URI, and the body rewritten for it (its
    /// slug; on the unified route, its wire format). Called for the first target and again on
    /// each failover.
    pub(super) fn bind(
        &self,
        ctx: &mut Ctx,
        route: Route,
        target: Arc<Model>,
        raw: &[u8],
        query: Option<&str>,
    ) -> Result<(), (GatewayError, &'static str)> {
        let Some(insp) = ctx.insp.as_mut() else {
            return Err((
                GatewayError::new(ErrorCode::InternalError, "request not inspected"),
                "body",
            ));
        };
        if route == Route::Unified {
            let target_family = match target.provider.kind {
                ProviderKind::Anthropic => translate::Target::Anthropic,
                ProviderKind::Google => translate::Target::Gemini,
                _ => translate::Target::OpenAi,
            };
            let prepared =
                translate::prepare(target_family, raw, &target.slug).map_err(|e| (e, "body"))?;
            let uri = if target.provider.kind == ProviderKind::AzureOpenAi {
                upstream_uri(&target, Route::ChatCompletions, None)
            } else {
                format!(
                    "{}{}",
                    target.provider.base_path,
                    translate::target_path(target_family, &target.slug, prepared.stream)
                )
                .parse::<http::Uri>()
                .map_err(|_| {
                    GatewayError::new(ErrorCode::InvalidRequest, "cannot build the upstream URL")
                })
            }
            .map_err(|e| (e, "model"))?;
            insp.stream = prepared.stream;
            insp.client_include_usage = prepared.include_usage;
            ctx.body = Some(prepared.body);
            ctx.upstream_uri = Some(uri);
            ctx.unified = Some(Unified {
                target: target_family,
                stream: None,
                buffer: None,
                upstream_status: 0,
            });
            ctx.model = Some(target);
            return Ok(());
        }
        let uri = upstream_uri(&target, route, query).map_err(|e| (e, "model"))?;
        let force_usage = route.body_kind().is_some_and(|k| k.openai_stream_usage());
        ctx.body = Some(body::rewrite(raw, insp, &target.slug, force_usage));
        ctx.upstream_uri = Some(uri);
        ctx.model = Some(target);
        Ok(())
    }

    /// Moves to the plan's next target that can be bound (`false`: none left).
    pub(super) fn next_target(&self, s: &Session, ctx: &mut Ctx) -> bool {
        let (Some(route), Some(raw)) = (ctx.route, ctx.raw.clone()) else {
            return false;
        };
        let query = s.req_header().uri.query().map(str::to_string);
        let json = route == Route::Unified || route.body_kind() != Some(body::BodyKind::Multipart);
        while let Some(t) = ctx.plan.advance() {
            match self.bind(ctx, route, t, &raw, query.as_deref()) {
                Ok(()) => {
                    // The rebuilt body goes through the `pre_upstream` filters again.
                    let set = ctx.snap.filters.clone();
                    let Some(fx) = ctx.filters.as_mut() else {
                        return true;
                    };
                    if let Some(m) = &ctx.model {
                        fx.resolved(&set, &m.name);
                    }
                    match fx.pre_upstream(&set, &mut ctx.body, json) {
                        Ok(()) => return true,
                        Err(_) => {
                            tracing::warn!(request_id = %ctx.request_id, "failover target blocked by a filter; skipped");
                        }
                    }
                }
                Err((e, _)) => {
                    tracing::warn!(request_id = %ctx.request_id, error = %e.message, "failover target skipped");
                }
            }
        }
        false
    }

    /// Decides whether a failed attempt moves on to the next target; records the failure.
    pub(super) fn fail_over(
        ctx: &mut Ctx,
        class: ErrorClass,
        retry_after: Option<Duration>,
    ) -> bool {
        ctx.plan.failure(retry_after);
        if !ctx.plan.fails_over(class, ctx.attempts.len()) {
            return false;
        }
        if let Some(m) = &ctx.model {
            metrics::FAILOVERS
                .with_label_values(&[m.provider.name.as_str(), class_label(class)])
                .inc();
        }
        ctx.attempt.advance = true;
        true
    }

    /// After an upstream error status: sets a rejected or throttled credential aside, and
    /// decides whether to retry (another credential of the same provider after a 401, or the
    /// next deployment when the status is a failover trigger). Nothing has reached the client.
    pub(super) fn retry_on_status(
        &self,
        status: u16,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> bool {
        let retry_after = failover::retry_after(&resp.headers);
        if let (Some(m), Some(i)) = (ctx.model.clone(), ctx.attempt.cred) {
            let creds = &m.provider.credentials;
            if creds.len() > 1 && matches!(status, 401 | 429) {
                let aside = retry_after.unwrap_or(if status == 429 {
                    Duration::from_secs(30)
                } else {
                    Duration::from_secs(300)
                });
                creds.set_aside(i, aside);
                tracing::warn!(provider = %m.provider.name, credential = i, status, "provider credential set aside");
                if status != 429
                    && creds.has_other(i)
                    && ctx.attempts.len() < failover::MAX_ATTEMPTS
                {
                    ctx.attempt.avoid_cred = Some(i);
                    return true;
                }
            }
        }
        Self::fail_over(ctx, ErrorClass::Status(status), retry_after)
    }
}

impl Gateway {
    /// The peer of this attempt: the plan's next target when the last attempt failed over,
    /// its address (in turn), TLS, timeouts.
    pub(super) async fn peer(&self, s: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if std::mem::take(&mut ctx.attempt.advance) {
            if !self.next_target(s, ctx) {
                return Err(Error::explain(
                    ErrorType::InternalError,
                    "no failover target left",
                ));
            }
            if !ctx.plan.retry_delay.is_zero() {
                tokio::time::sleep(ctx.plan.retry_delay).await;
            }
        }
        ctx.plan.start();
        let t = Instant::now();
        let model = ctx
            .model
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no model resolved"))?;
        let p = &model.provider;
        let addrs = p.addrs.load();
        if addrs.is_empty() {
            return Err(Error::explain(
                ErrorType::ConnectNoRoute,
                format!("provider host {} is not resolved", p.host),
            ));
        }
        let addr = addrs[ctx.attempts.len() % addrs.len()];
        let mut peer = HttpPeer::new(addr, p.tls, p.host.clone());
        peer.options.connection_timeout = Some(p.connect_timeout);
        peer.options.total_connection_timeout = Some(p.connect_timeout * 2);
        peer.options.read_timeout = Some(p.read_timeout);
        peer.options.write_timeout = Some(p.read_timeout.min(Duration::from_secs(60)));
        peer.options.idle_timeout = Some(p.idle_timeout);
        ctx.attempt.start = Some(Instant::now());
        ctx.overhead += t.elapsed();
        Ok(Box::new(peer))
    }

    /// The upstream request head: path, `Host`, the provider credential (client credentials,
    /// cookies and `accept-encoding` removed), the provider's headers, the exact
    /// `Content-Length` of the rewritten body, the gateway's request id, filters' headers.
    pub(super) fn upstream_head(req: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
        let (Some(model), Some(uri), Some(body)) = (&ctx.model, &ctx.upstream_uri, &ctx.body)
        else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request not admitted",
            ));
        };
        let p = &model.provider;
        req.set_uri(uri.clone());
        for h in [
            "authorization",
            "x-api-key",
            "x-goog-api-key",
            "api-key",
            "accept-encoding",
            "cookie",
            "proxy-authorization",
            "transfer-encoding",
            "expect",
        ] {
            req.remove_header(h);
        }
        req.insert_header("host", p.authority.as_str())?;
        ctx.attempt.cred = None;
        if let Some((i, v)) = p.credentials.pick(ctx.attempt.avoid_cred.take()) {
            req.insert_header(p.auth_header.clone(), v.clone())?;
            ctx.attempt.cred = Some(i);
        }
        if p.kind == ProviderKind::Anthropic && req.headers.get("anthropic-version").is_none() {
            req.insert_header("anthropic-version", "2023-06-01")?;
        }
        for (k, v) in &p.headers {
            req.insert_header(k.clone(), v.clone())?;
        }
        let multipart = ctx.route.and_then(Route::body_kind) == Some(body::BodyKind::Multipart);
        if !multipart {
            req.insert_header("content-type", "application/json")?;
        }
        req.insert_header("content-length", body.len().to_string())?;
        req.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(fx) = &ctx.filters {
            fx.apply_headers(req)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn model(snap: &Snapshot, name: &str) -> Arc<Model> {
        snap.config.model("org", name).unwrap().clone()
    }

    #[test]
    fn upstream_uris_follow_each_providers_layout() {
        let snap = super::super::admit::tests::snapshot();
        let uri = |m: &str, r: Route, q: Option<&str>| {
            upstream_uri(&model(&snap, m), r, q).unwrap().to_string()
        };
        assert_eq!(
            uri("chat", Route::ChatCompletions, None),
            "/v1/chat/completions"
        );
        assert_eq!(uri("emb", Route::Embeddings, None), "/v1/embeddings");
        assert_eq!(uri("claude", Route::Messages, None), "/v1/messages");
        // Azure: the deployment in the path and its api-version first, the client's query kept
        // (its `key` credential removed).
        assert_eq!(
            uri("azchat", Route::ChatCompletions, None),
            "/openai/deployments/dep-1/chat/completions?api-version=2025-01-01"
        );
        assert_eq!(
            uri("azchat", Route::ChatCompletions, Some("key=vk&x=1")),
            "/openai/deployments/dep-1/chat/completions?api-version=2025-01-01&x=1"
        );
        // Built once per model and route: the second answer is the cached one.
        let m = model(&snap, "chat");
        let a = upstream_uri(&m, Route::ChatCompletions, None).unwrap();
        assert!(m
            .uri_cache
            .read()
            .unwrap()
            .contains_key(Route::ChatCompletions.name()));
        assert_eq!(a, upstream_uri(&m, Route::ChatCompletions, None).unwrap());
    }
}
