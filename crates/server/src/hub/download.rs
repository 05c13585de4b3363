//! One file over HTTP(S) into a `.incomplete` file beside its final name: resumes what an
//! earlier run left with a Range request, retries a cut connection from where it stopped,
//! checks size and sha256, and only then renames it into place. A file that fails
//! verification is removed, so nothing unverified ever carries the final name.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use super::progress::Progress;

/// Connection drops survived in one run before giving up (the next run resumes anyway).
const MAX_RETRIES: usize = 8;

#[derive(Debug, Clone, Default)]
pub struct Expected {
    pub size: Option<u64>,
    /// Lower-case hex.
    pub sha256: Option<String>,
}

pub fn client() -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("slm/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(60))
        .build()
        .context("cannot build the HTTP client")
}

/// Downloads `url` to `dest` through `partial`; `token` is sent as a bearer token (reqwest
/// drops it on a redirect to another host, e.g. a CDN's signed URL).
pub async fn download(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    partial: &Path,
    dest: &Path,
    expected: &Expected,
    progress: &mut Progress,
) -> Result<()> {
    if let Some(dir) = partial.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(partial)
        .with_context(|| format!("cannot open {}", partial.display()))?;
    let mut len = file.metadata()?.len();
    if expected.size.is_some_and(|s| len > s) {
        file.set_len(0)?;
        len = 0;
    }
    let mut hasher = hash_prefix(partial, len)?;
    progress.skip(len);
    let mut size = expected.size;
    let mut retries = 0;
    loop {
        if size == Some(len) && len > 0 {
            break;
        }
        let mut req = client.get(url);
        if len > 0 {
            req = req.header(RANGE, format!("bytes={len}-"));
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if retries < MAX_RETRIES && !e.is_builder() && len > 0 => {
                retries += 1;
                eprintln!("{url}: {e}; retrying ({retries}/{MAX_RETRIES})");
                tokio::time::sleep(backoff(retries)).await;
                continue;
            }
            Err(e) => return Err(e).with_context(|| format!("cannot reach {url}")),
        };
        let status = resp.status();
        match status {
            StatusCode::PARTIAL_CONTENT => {
                let range = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("");
                if !range.starts_with(&format!("bytes {len}-")) {
                    bail!("{url}: asked for bytes from {len}, the server sent `{range}`");
                }
                if let Some(total) = range.rsplit('/').next().and_then(|t| t.parse::<u64>().ok()) {
                    check_size(url, &mut size, total)?;
                }
            }
            StatusCode::OK => {
                if len > 0 {
                    // The server ignored the Range request: start over.
                    file.set_len(0)?;
                    hasher = Sha256::new();
                    progress.rewind(std::mem::take(&mut len));
                }
                if let Some(total) = resp.content_length() {
                    check_size(url, &mut size, total)?;
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if len > 0 => {
                file.set_len(0)?;
                hasher = Sha256::new();
                progress.rewind(std::mem::take(&mut len));
                continue;
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                bail!("{url}: {status}: the repo is gated or private; set HF_TOKEN to a token that may read it")
            }
            StatusCode::NOT_FOUND => bail!("{url}: not found (404)"),
            s => bail!("{url}: HTTP {s}"),
        }
        if let Some(s) = size {
            progress.set_total(s);
        }
        let mut body = resp.bytes_stream();
        let mut cut = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(b) => {
                    file.write_all(&b).with_context(|| format!("cannot write {}", partial.display()))?;
                    hasher.update(&b);
                    len += b.len() as u64;
                    progress.inc(b.len() as u64);
                }
                Err(e) => {
                    cut = Some(e);
                    break;
                }
            }
        }
        match cut {
            None if size.is_none_or(|s| len >= s) => break,
            None => cut_or_fail(url, len, &mut retries, "the connection closed early").await?,
            Some(e) => cut_or_fail(url, len, &mut retries, &e.to_string()).await?,
        }
    }
    file.sync_all()?;
    drop(file);
    let digest = format!("{:x}", hasher.finalize());
    let fail = |why: String| -> Result<()> {
        let _ = std::fs::remove_file(partial);
        bail!("{url}: {why}; the download was removed")
    };
    if let Some(s) = expected.size.or(size).filter(|&s| s != len) {
        return fail(format!("got {len} bytes, expected {s}"));
    }
    if let Some(want) = expected.sha256.as_deref().filter(|w| !w.eq_ignore_ascii_case(&digest)) {
        return fail(format!("sha256 {digest} does not match the expected {want}"));
    }
    std::fs::rename(partial, dest).with_context(|| format!("cannot move the download to {}", dest.display()))?;
    Ok(())
}

fn check_size(url: &str, size: &mut Option<u64>, total: u64) -> Result<()> {
    match *size {
        Some(s) if s != total => bail!("{url}: the server says {total} bytes, expected {s}"),
        _ => *size = Some(total),
    }
    Ok(())
}

async fn cut_or_fail(url: &str, len: u64, retries: &mut usize, why: &str) -> Result<()> {
    if *retries >= MAX_RETRIES {
        bail!("{url}: {why}, {MAX_RETRIES} times; run the same command again to resume from byte {len}");
    }
    *retries += 1;
    eprintln!("{url}: {why} at byte {len}; resuming ({}/{MAX_RETRIES})", *retries);
    tokio::time::sleep(backoff(*retries)).await;
    Ok(())
}

fn backoff(retry: usize) -> Duration {
    Duration::from_millis(250 << retry.min(5))
}

/// The hash state after the first `len` bytes of `path` (what an earlier run wrote).
fn hash_prefix(path: &Path, len: u64) -> Result<Sha256> {
    let mut hasher = Sha256::new();
    if len == 0 {
        return Ok(hasher);
    }
    let mut f = File::open(path)?.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher)
}

/// sha256 of a whole file, lower-case hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    Ok(format!("{:x}", hash_prefix(path, len)?.finalize()))
}

/// True when `e` says the host could not be reached at all (so another source may be tried),
/// not that it answered with something wrong.
pub fn is_unreachable(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<reqwest::Error>().is_some_and(|r| r.is_connect() || r.is_timeout()))
}
