//! The accept loop `slm serve` runs instead of `axum::serve`, for the limits a server on a LAN
//! needs and axum does not expose: a cap on open connections and a lower one per client
//! address (a slowloris from one host cannot take every socket), a timeout on reading request
//! heads (a half-sent head is dropped, not kept forever), clients that half-close their socket
//! after the request still get the response (curl and proxies do that), and a graceful
//! shutdown that lets in-flight connections finish. Body read timeouts are a layer on the
//! router (`tower_http`'s `RequestBodyTimeoutLayer`, added by `serve.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: usize,
    pub max_connections_per_client: usize,
    pub header_read_timeout: Duration,
}

/// Open connections per client address.
#[derive(Default)]
struct PerClient(Mutex<HashMap<IpAddr, usize>>);

impl PerClient {
    /// Whether `ip` may open one more connection (and counts it if so).
    fn try_add(&self, ip: IpAddr, max: usize) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts `ip` in (as `try_add`) and returns a guard that counts it out when dropped —
    /// however the connection's task ends, a panic in a handler included.
    fn enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        self.try_add(ip, max).then(|| ClientSlot { clients: self.clone(), ip })
    }

    fn remove(&self, ip: IpAddr) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&ip);
            }
        }
    }
}

/// One connection's place in its client's count.
struct ClientSlot {
    clients: Arc<PerClient>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.clients.remove(self.ip);
    }
}

/// Answers a connection over a cap with an API-shaped 503 and closes it, reading (a bounded
/// part of) what the client sent first so the close does not reset the answer away.
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = r#"{"error":{"message":"Too many open connections; retry shortly.","type":"server_error","param":null,"code":"too_many_connections"}}"#;
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(200), stream.read(&mut sink)).await;
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
    // Drain briefly so unread request bytes do not turn the close into a reset.
    let drain = async {
        let mut total = 0;
        while let Ok(n) = stream.read(&mut sink).await {
            total += n;
            if n == 0 || total > 1 << 16 {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

/// Serves `app` on every listener (one per `--host` address) until `shutdown` resolves, then
/// waits for open connections to finish (the caller bounds that wait). The caps count the
/// connections of all listeners together.
pub async fn serve(listeners: Vec<TcpListener>, app: Router, limits: Limits, shutdown: impl Future<Output = ()>) {
    // HTTP/1 only: the clients are OpenAI-style HTTP/1 clients, and hyper's head timeout
    // covers HTTP/1 alone (an idle h2c connection would hold its slot).
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    // Header names in title case (`Content-Type`), as llama-server, nginx and most servers
    // write them: clients that look them up case-sensitively find them.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .half_close(true)
        .title_case_headers(true);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::default());
    // One acceptor per listener, all feeding this loop; aborted (closing their sockets) at
    // shutdown.
    let (tx, mut accepted) = tokio::sync::mpsc::channel(64);
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok(a) => {
                            if tx.send(a).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            // Out of file descriptors, typically: back off instead of spinning.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            })
        })
        .collect();
    drop(tx);
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            a = accepted.recv() => match a {
                Some(a) => a,
                None => break,
            },
            _ = &mut shutdown => break,
        };
        // Over a cap the connection gets a 503 with Retry-After at once (a proxy may retry
        // elsewhere) and is closed: no slot is held by a socket that may never send a request.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%addr, "connection cap reached");
            tokio::spawn(refuse(stream));
            continue;
        };
        let Some(client_slot) = per_client.enter(addr.ip(), limits.max_connections_per_client) else {
            tracing::debug!(%addr, "per-client connection cap reached");
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            // Both slots are released when this task ends, by return or by unwinding.
            let _slots = (slot, client_slot);
            if let Err(e) = conn.await {
                tracing::debug!(%addr, "connection ended: {e}");
            }
        });
    }
    acceptors.iter().for_each(|a| a.abort());
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_address_is_counted_on_its_own() {
        let p = PerClient::default();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        assert!(p.try_add(a, 2) && p.try_add(a, 2));
        assert!(!p.try_add(a, 2), "a third from one address is refused");
        assert!(p.try_add(b, 2), "another address still gets in");
        p.remove(a);
        assert!(p.try_add(a, 2));
        p.remove(a);
        p.remove(a);
        p.remove(b);
        assert!(p.0.lock().unwrap().is_empty());
        // A guard counts out when dropped, also while unwinding.
        let p = Arc::new(p);
        let q = p.clone();
        let r = std::panic::catch_unwind(move || {
            let _slot = q.enter(a, 1).unwrap();
            panic!("a handler panics");
        });
        assert!(r.is_err());
        assert!(p.0.lock().unwrap().is_empty(), "the panicking connection was counted out");
    }
}
