//! `slm serve`: binds first (so `/health` answers 503 while loading), registers every model
//! (registry.rs), loads the start-up ones, then serves (listener.rs: connection caps, read timeouts) until
//! SIGTERM/Ctrl-C; in-flight requests get `shutdown_timeout_s` to finish.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::http::HeaderValue;
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::config::ModelSpec;
use crate::config::ServerConfig;
use crate::listener::Limits;
use crate::registry::{Entry, EntrySpec, ModelKind, Registry};
use crate::response_store::ResponseStore;
use crate::routes::unix_now;
use crate::state::{AppState, Settings};

pub async fn serve(cfg: ServerConfig) -> Result<()> {
    crate::routes::metrics::PROCESS_START.get_or_init(unix_now);
    raise_fd_limit();
    crate::memory::tune_allocator();
    // `--host` may list several addresses, comma-separated (llama.cpp's form).
    let hosts: Vec<&str> = cfg.host.split(',').map(str::trim).filter(|h| !h.is_empty()).collect();
    let loopback = hosts.iter().all(|h| h.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(*h == "localhost"));
    if !loopback && cfg.api_keys.is_empty() {
        tracing::warn!(
            "binding {} with no API key: anyone on the network can use this server (set --api-key or SLM_API_KEY)",
            cfg.host
        );
        eprintln!("slm: WARNING: listening on non-loopback address {} without an API key; anyone who can reach it can use it. Set --api-key, SLM_API_KEY or api_keys in the config.", cfg.host);
    }
    let responses = match &cfg.responses_db {
        Some(path) => ResponseStore::open(path, cfg.responses_max_count, cfg.responses_max_age_s)?,
        None => ResponseStore::in_memory(cfg.responses_max_count, cfg.responses_max_age_s),
    };
    let state = AppState::new(Settings {
        api_keys: cfg.api_keys.clone(),
        admin_api_keys: cfg.admin_api_keys.clone(),
        body_limit: cfg.body_limit,
        responses: Arc::new(responses),
        ui: cfg.ui,
        slots: cfg.slots,
        metrics: cfg.metrics,
        reasoning: cfg.reasoning,
    });
    let mut app = crate::app(state.clone());
    if !cfg.cors_allowed_origins.is_empty() {
        let origins = if cfg.cors_allowed_origins.iter().any(|o| o == "*") {
            AllowOrigin::from(Any)
        } else {
            // `localhost` (llama.cpp's keyword) stands for every loopback origin, any port.
            let listed: Vec<HeaderValue> =
                cfg.cors_allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()).collect();
            let loopback = cfg.cors_allowed_origins.iter().any(|o| o == "localhost");
            AllowOrigin::predicate(move |origin: &HeaderValue, _| {
                listed.contains(origin) || (loopback && origin.to_str().is_ok_and(is_loopback_origin))
            })
        };
        // `*` does not cover `Authorization` under the Fetch standard: mirror what the
        // preflight asks for (Authorization, Content-Type, x-api-key, the SDKs' own headers).
        app = app.layer(
            CorsLayer::new().allow_origin(origins).allow_methods(Any).allow_headers(AllowHeaders::mirror_request()),
        );
    }
    let mut listeners = Vec::new();
    let mut port = cfg.port;
    for host in &hosts {
        let listener =
            tokio::net::TcpListener::bind((*host, port)).await.with_context(|| format!("cannot bind {host}:{port}"))?;
        let addr = listener.local_addr()?;
        // Port 0 picks a free port once: the other addresses take the same one.
        port = addr.port();
        println!("slm: listening on http://{addr}");
        listeners.push(listener);
    }
    if listeners.is_empty() {
        anyhow::bail!("--host names no address");
    }

    let eager = cfg.models.len();
    let entries: Vec<Entry> =
        cfg.models.iter().chain(&cfg.discovered).map(|m| Entry::new(entry_spec(m), unix_now())).collect();
    state.set_registry(Registry::new(entries, cfg.limits.clone()));
    let st = state.clone();
    tokio::spawn(async move {
        let Ok(reg) = st.registry() else { return };
        // The start-up models load one after another, each on its own thread; a bad one ends
        // the process, as a typo in `--model` should.
        for e in reg.entries.iter().take(eager) {
            let t = std::time::Instant::now();
            if let Err(err) = reg.acquire(e, None).await {
                eprintln!("slm: error: {}", err.message);
                std::process::exit(1);
            }
            let what = if e.is_embedding() { "embedding model" } else { "model" };
            println!(
                "slm: {what} `{}` ready ({}, {:.1} s)",
                e.spec.id,
                e.spec.path.display(),
                t.elapsed().as_secs_f64()
            );
        }
        st.mark_ready();
        if reg.entries.len() > eager {
            println!(
                "slm: {} more model(s) load on demand: {}",
                reg.entries.len() - eager,
                reg.entries[eager..].iter().map(|e| e.spec.id.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            reg.reap_idle();
        }
    });

    // Slow clients: a body that trickles in is cut off, like a head (listener.rs).
    let app = app.layer(RequestBodyTimeoutLayer::new(Duration::from_secs(cfg.body_read_timeout_s)));
    let limits = Limits {
        max_connections: cfg.max_connections,
        max_connections_per_client: cfg.max_connections_per_client,
        header_read_timeout: Duration::from_secs(cfg.header_read_timeout_s),
    };
    crate::listener::serve(listeners, app, limits, shutdown_signal(state, cfg.shutdown_timeout_s)).await;
    Ok(())
}

/// A model's registry entry; whether it embeds is read from its GGUF header (a file that
/// cannot be read is reported when it loads).
fn entry_spec(m: &ModelSpec) -> EntrySpec {
    let encoder = slm_engine::is_embedding_gguf(&m.path).unwrap_or(false);
    EntrySpec {
        id: m.alias.clone(),
        aliases: m.aliases.clone(),
        tags: m.tags.clone(),
        path: m.path.clone(),
        engine: m.engine.clone(),
        kind: match m.pooling {
            // An encoder pools as its header says, whatever the config asks.
            _ if encoder => ModelKind::Encoder,
            Some(p) => ModelKind::PooledDecoder(p),
            None => ModelKind::Generate,
        },
        keep_alive: m.keep_alive,
        draft: m.draft.clone(),
        chat_template: m.chat_template.clone(),
        loras: m.loras.clone(),
        lora_limits: m.lora_limits,
    }
}

/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, with or without a port.
fn is_loopback_origin(origin: &str) -> bool {
    let Some(rest) = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) else { return false };
    let host = match rest.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => rest,
    };
    matches!(host, "localhost" | "127.0.0.1" | "[::1]")
}

/// Raises the soft open-file limit to the hard one (where allowed), so the connection cap,
/// not the process's descriptors, is what bounds clients.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!("open-file limit {n}"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

async fn shutdown_signal(state: AppState, timeout_s: u64) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    state.start_draining();
    eprintln!("slm: shutting down: no new connections; waiting up to {timeout_s} s for requests in flight");
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(timeout_s)).await;
        eprintln!("slm: shutdown timeout reached; exiting");
        std::process::exit(0);
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_origins_are_recognised() {
        for o in
            ["http://localhost", "http://localhost:8080", "https://127.0.0.1:3000", "http://[::1]", "http://[::1]:3000"]
        {
            assert!(super::is_loopback_origin(o), "{o}");
        }
        for o in [
            "http://evil.com",
            "http://localhost.evil.com",
            "http://127.0.0.2",
            "localhost",
            "http://[::2]:80",
            "http://localhost:80x",
        ] {
            assert!(!super::is_loopback_origin(o), "{o}");
        }
    }
}
