//! Process-wide state: the hot-swappable `Live` config and what outlives a reload.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use ipnet::IpNet;
use keyring::Keyring;

use crate::accept::caps::ConnLimits;
use crate::accept::tls::TlsState;
use crate::admit::admin_token::AdminToken;
use crate::admit::blocklist::Blocklist;
use crate::admit::client_ip::ClientIpPolicy;
use crate::admit::identity::TokenCache;
use crate::admit::inflight::InflightCap;
use crate::admit::limits::shared::Engine;
use crate::admit::limits::Limiter;
use crate::admit::net::canonical_nets;
use crate::config::Config;
use crate::forward::upstream::UpstreamState;
use crate::observe::config_status::ConfigStatus;
use crate::observe::metrics::Metrics;

/// Everything a request reads from config, swapped atomically on reload. A
/// request loads it once, so it never sees half of an old and half of a new config.
pub struct Live {
    pub config: Config,
    pub client_ip: ClientIpPolicy,
    pub keys: Keyring,
    /// Tokens already verified with `keys`; new on every reload.
    pub tokens: TokenCache,
    pub limiter: Limiter,
    /// Set with `shared_limits:`; kept across reloads unless Redis settings change.
    pub shared_limits: Option<Arc<Engine>>,
    /// Per-client in-flight counts: carried over on reload (the cap is read from `config`).
    pub inflight: Arc<InflightCap>,
    pub blocklist: Blocklist,
    /// `proxy_protocol.from`, canonical: peers whose connections open with a PROXY header.
    pub balancers: Vec<IpNet>,
    pub csp: HeaderValue,
    pub hsts: Option<HeaderValue>,
    /// From `admin.token_file`, read on every (re)load so a new token needs no restart.
    pub admin_token: Option<AdminToken>,
}

impl Live {
    /// Builds from a validated config; carries limiter state over from `previous`.
    pub fn build(config: Config, previous: Option<&Live>) -> Result<Live, String> {
        let keys = Keyring::load(&config.token_key_file).map_err(|e| e.to_string())?;
        Live::with_keys(config, keys, previous)
    }

    /// `build` with the key set already loaded (tests build one from YAML text).
    pub fn with_keys(
        config: Config,
        keys: Keyring,
        previous: Option<&Live>,
    ) -> Result<Live, String> {
        let client_ip = ClientIpPolicy::new(
            &config.trusted_proxies,
            config.forwarded_headers.clone(),
            config.max_forwarded_hops,
        );
        let shared_limits = match &config.shared_limits {
            Some(c) => Some(Engine::for_reload(
                c,
                previous.and_then(|p| p.shared_limits.as_ref()),
            )?),
            None => None,
        };
        let mut limiter = Limiter::with_shared(
            &config.rate_limits,
            shared_limits.as_ref(),
            previous.map(|p| &p.limiter),
        );
        limiter.set_top(
            config.admin.top_keys,
            config.admin.top_window,
            previous.map(|p| &p.limiter),
        );
        let admin_token = config.admin.read_token()?.map(|t| AdminToken::new(&t));
        // Validated at load, so these conversions cannot fail.
        let csp = HeaderValue::from_str(&config.security_headers.content_security_policy)
            .map_err(|e| e.to_string())?;
        let tls = config.tls.is_some();
        let hsts = match config.security_headers.effective_hsts(tls) {
            Some(v) => Some(HeaderValue::from_str(v).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(Live {
            blocklist: Blocklist::new(&config.block),
            balancers: canonical_nets(&config.proxy_protocol.from),
            config,
            client_ip,
            keys,
            tokens: TokenCache::default(),
            limiter,
            shared_limits,
            inflight: previous.map_or_else(Default::default, |p| Arc::clone(&p.inflight)),
            csp,
            hsts,
            admin_token,
        })
    }
}

pub struct Process {
    pub live: ArcSwap<Live>,
    pub metrics: Metrics,
    pub upstream: Arc<UpstreamState>,
    pub config_path: PathBuf,
    /// Set with `tls:` at startup; a reload swaps the certificate through `tls.resolver`.
    pub tls: Option<TlsState>,
    /// Per-client connection counts and rates: outlive a reload (caps are read per accept).
    pub conn_limits: ConnLimits,
    /// The loaded config's hash and the last reload's result (`/limits`, config metrics).
    pub status: ConfigStatus,
    /// SIGTERM seen: /readyz fails, requests are still served (`timeouts.shutdown_delay`).
    shutting_down: AtomicBool,
    /// After the delay: the listener is closed and connections close after their request.
    draining: AtomicBool,
}

impl Process {
    pub fn new(live: Live, config_path: PathBuf) -> Process {
        let upstream = Arc::new(UpstreamState::new(&live.config.upstream));
        let metrics = Metrics::new();
        let status = ConfigStatus::new(
            metrics.registry(),
            crate::observe::config_status::file_sha256(&config_path),
        );
        Process {
            live: ArcSwap::from_pointee(live),
            metrics,
            status,
            upstream,
            config_path,
            tls: None,
            conn_limits: ConnLimits::default(),
            shutting_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// Serves TLS with `tls` (loaded by `operate::certs::check`).
    pub fn with_tls(mut self, tls: TlsState) -> Process {
        self.tls = Some(tls);
        self
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    pub fn start_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.start_shutting_down();
        self.draining.store(true, Ordering::Relaxed);
    }
}
