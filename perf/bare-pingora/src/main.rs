//! The floor `perf/instructions.sh` measures the gateway against: a bare pingora 0.9
//! proxy with one fixed peer, upstream keep-alive, mimalloc and one worker thread, and
//! none of the gateway's stages. Usage: `bare-pingora LISTEN_ADDR PEER_ADDR`.

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

// The gateway's allocator, so the comparison is about the request path, not malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare {
    peer: SocketAddr,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<()> {
        // As the gateway does: keep the client connection (pingora's default closes it).
        session.set_keepalive(Some(60));
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.peer, false, String::new())))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(listen), Some(Ok(peer))) = (args.first(), args.get(1).map(|p| p.parse())) else {
        eprintln!(
            "usage: bare-pingora LISTEN_ADDR PEER_ADDR (e.g. 127.0.0.1:25083 127.0.0.1:25081)"
        );
        return ExitCode::from(2);
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        upstream_keepalive_pool_size: 256,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(&server.configuration, Bare { peer });
    proxy.add_tcp(listen);
    server.add_service(proxy);
    server.run_forever()
}
