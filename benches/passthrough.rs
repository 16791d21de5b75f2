//! The benchmark floor: a bare Pingora reverse proxy with no logic.
//!
//! Every request is forwarded unchanged, over plain HTTP, to one fixed
//! upstream address. Upstream keep-alive pooling is left at Pingora's
//! default, and chunked (SSE) responses are streamed without buffering.
//!
//! ```text
//! passthrough --listen 127.0.0.1:18081 --upstream 127.0.0.1:18080 --threads 1
//! ```

use std::net::SocketAddr;

use async_trait::async_trait;
use clap::Parser;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[derive(Parser, Debug)]
#[command(
    name = "passthrough",
    about = "Bare Pingora reverse proxy used as the benchmark floor"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18081")]
    listen: SocketAddr,
    /// Upstream address every request is forwarded to (plain HTTP).
    #[arg(long, default_value = "127.0.0.1:18080")]
    upstream: SocketAddr,
    /// Number of worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

struct Passthrough {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Passthrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

fn main() {
    let args = Args::parse();

    let conf = ServerConf {
        threads: args.threads.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let proxy = Passthrough {
        peer: HttpPeer::new(args.upstream, false, String::new()),
    };
    let mut service = http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&args.listen.to_string());
    server.add_service(service);

    println!(
        "passthrough listening on {} -> {}",
        args.listen, args.upstream
    );
    server.run_forever();
}
