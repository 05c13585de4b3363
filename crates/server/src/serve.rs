//! `slm serve`: binds first (so `/health` answers 503 while loading), loads each model and
//! starts its engine, then serves (listener.rs: connection caps, read timeouts) until
//! SIGTERM/Ctrl-C; in-flight requests get `shutdown_timeout_s` to finish.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use axum::http::HeaderValue;
use slm_engine::{EmbedderHandle, EmbeddingModel, EngineHandle, Model};
use tower_http::cors::{AllowHeaders, AllowOrigin, Any, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::config::ServerConfig;
use crate::listener::Limits;
use crate::response_store::ResponseStore;
use crate::routes::unix_now;
use crate::state::{AppState, ServedEmbedder, ServedModel, Settings};

/// Tokens per embedding forward: 2,048 measured best on MiniLM (1,024 and 8,192 were slower:
/// too little work per matmul, or buffers past the caches).
const EMBED_BATCH_TOKENS: usize = 2048;

pub async fn serve(cfg: ServerConfig) -> Result<()> {
    raise_fd_limit();
    let loopback = cfg.host.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(cfg.host == "localhost");
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
        body_limit: cfg.body_limit,
        responses: Arc::new(responses),
    });
    let mut app = crate::app(state.clone());
    if !cfg.cors_allowed_origins.is_empty() {
        let origins = if cfg.cors_allowed_origins.iter().any(|o| o == "*") {
            AllowOrigin::from(Any)
        } else {
            AllowOrigin::list(cfg.cors_allowed_origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        };
        // `*` does not cover `Authorization` under the Fetch standard: mirror what the
        // preflight asks for (Authorization, Content-Type, x-api-key, the SDKs' own headers).
        app = app.layer(
            CorsLayer::new().allow_origin(origins).allow_methods(Any).allow_headers(AllowHeaders::mirror_request()),
        );
    }
    let listener = tokio::net::TcpListener::bind((cfg.host.as_str(), cfg.port))
        .await
        .with_context(|| format!("cannot bind {}:{}", cfg.host, cfg.port))?;
    let addr = listener.local_addr()?;
    println!("slm: listening on http://{addr}");

    let specs = cfg.models.clone();
    let st = state.clone();
    tokio::task::spawn_blocking(move || {
        let (mut served, mut embedders) = (Vec::new(), Vec::new());
        for spec in specs {
            let t = std::time::Instant::now();
            let fail = |e: slm_engine::EngineError| -> ! {
                eprintln!("slm: error: cannot load model `{}`: {e}", spec.alias);
                std::process::exit(1);
            };
            let ready = |what: &str| {
                println!(
                    "slm: {what} `{}` ready ({}, {:.1} s)",
                    spec.alias,
                    spec.path.display(),
                    t.elapsed().as_secs_f64()
                )
            };
            // A file that cannot even be opened is reported by `Model::load` below.
            let encoder = slm_engine::is_embedding_gguf(&spec.path).unwrap_or(false);
            if encoder || spec.pooling.is_some() {
                let model = match spec.pooling {
                    Some(p) if !encoder => {
                        Model::load(&spec.path).map(|m| EmbeddingModel::from_decoder(Arc::new(m), p))
                    }
                    _ => EmbeddingModel::load(&spec.path),
                };
                let embedder = model
                    .and_then(|m| EmbedderHandle::start(Arc::new(m), EMBED_BATCH_TOKENS))
                    .unwrap_or_else(|e| fail(e));
                ready("embedding model");
                embedders.push(ServedEmbedder { id: spec.alias.clone(), embedder, created: unix_now() });
                continue;
            }
            let engine = Model::load(&spec.path)
                .map(Arc::new)
                .and_then(|m| EngineHandle::start(m, spec.engine.clone()))
                .unwrap_or_else(|e| fail(e));
            // The grammar index is built off the loading path: only a constrained request
            // that comes in the first second waits for it.
            let model = engine.model().clone();
            std::thread::spawn(move || model.grammar.warm_up());
            ready("model");
            served.push(ServedModel { id: spec.alias, engine, created: unix_now() });
        }
        st.set_embedders(embedders);
        st.set_models(served);
    });

    // Slow clients: a body that trickles in is cut off, like a head (listener.rs).
    let app = app.layer(RequestBodyTimeoutLayer::new(Duration::from_secs(cfg.body_read_timeout_s)));
    let limits = Limits {
        max_connections: cfg.max_connections,
        max_connections_per_client: cfg.max_connections_per_client,
        header_read_timeout: Duration::from_secs(cfg.header_read_timeout_s),
    };
    crate::listener::serve(listener, app, limits, shutdown_signal(cfg.shutdown_timeout_s)).await;
    Ok(())
}

/// Raises the soft open-file limit to the hard one (where allowed), so the connection cap,
/// not the process's descriptors, is what bounds clients.
fn raise_fd_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!("open-file limit {n}"),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

async fn shutdown_signal(timeout_s: u64) {
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
    eprintln!("slm: shutting down: no new connections; waiting up to {timeout_s} s for requests in flight");
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_secs(timeout_s)).await;
        eprintln!("slm: shutdown timeout reached; exiting");
        std::process::exit(0);
    });
}
