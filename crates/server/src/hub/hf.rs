//! A Hugging Face hub (or a mirror named by `HF_ENDPOINT`, with `HF_TOKEN` for gated repos):
//! the repo's file list at a revision (`/api/models/{repo}/revision/{rev}`), one file's
//! metadata from a HEAD of `/{repo}/resolve/{commit}/{file}` (commit, etag = the LFS sha256,
//! size, where the bytes are), and the download of that file into the cache layout.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use reqwest::header::{HeaderMap, CONTENT_LENGTH, ETAG, LOCATION};
use reqwest::StatusCode;

use super::download::{self, Expected};
use super::hf_cache::RepoCache;
use super::progress::Progress;
use super::source::{choose_file, Pick};

pub struct Hub {
    client: reqwest::Client,
    /// Redirects are read, not followed: the HEAD's own headers carry the metadata.
    head_client: reqwest::Client,
    pub endpoint: String,
    token: Option<String>,
}

pub struct FileMeta {
    pub commit: String,
    /// The blob's name: the sha256 for LFS files, the git blob id otherwise.
    pub etag: String,
    pub size: Option<u64>,
    pub url: String,
}

impl Hub {
    pub fn from_env() -> Result<Self> {
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| "https://huggingface.co".into())
            .trim_end_matches('/')
            .to_string();
        let token =
            ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"].iter().find_map(|k| std::env::var(k).ok().filter(|t| !t.is_empty()));
        let head_client = reqwest::Client::builder()
            .user_agent(concat!("slm/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client: download::client()?, head_client, endpoint, token })
    }

    fn get(&self, url: &str) -> reqwest::RequestBuilder {
        let r = self.client.get(url);
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// The commit `revision` points at and the repo's files there.
    pub async fn repo_files(&self, repo: &str, revision: &str) -> Result<(String, Vec<String>)> {
        let url = format!("{}/api/models/{repo}/revision/{revision}", self.endpoint);
        let resp = self.get(&url).send().await.with_context(|| format!("cannot reach {}", self.endpoint))?;
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                bail!("{repo} (revision {revision}): not found on {}, or gated/private (set HF_TOKEN)", self.endpoint)
            }
            s => bail!("{url}: HTTP {s}"),
        }
        let info: serde_json::Value = resp.json().await.with_context(|| format!("{url}: not JSON"))?;
        let commit = info["sha"].as_str().map(str::to_string).unwrap_or_else(|| revision.to_string());
        let files = info["siblings"]
            .as_array()
            .map(|s| s.iter().filter_map(|f| f["rfilename"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        Ok((commit, files))
    }

    pub async fn file_meta(&self, repo: &str, revision: &str, file: &str) -> Result<FileMeta> {
        let url = format!("{}/{repo}/resolve/{revision}/{file}", self.endpoint);
        let mut req = self.head_client.head(&url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.with_context(|| format!("cannot reach {}", self.endpoint))?;
        let status = resp.status();
        if !(status.is_success() || status.is_redirection()) {
            bail!("{url}: HTTP {status}{}", if status == StatusCode::NOT_FOUND { " (no such file)" } else { "" });
        }
        let h = resp.headers();
        let etag = header(h, "x-linked-etag")
            .or_else(|| header(h, ETAG.as_str()))
            .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
            .filter(|e| !e.is_empty() && !e.contains(['/', '\\', '.']))
            .with_context(|| format!("{url}: the server sent no usable ETag"))?;
        let size =
            header(h, "x-linked-size").or_else(|| header(h, CONTENT_LENGTH.as_str())).and_then(|s| s.parse().ok());
        let commit = header(h, "x-repo-commit").unwrap_or_else(|| revision.to_string());
        let url = match header(h, LOCATION.as_str()) {
            Some(loc) if status.is_redirection() => reqwest::Url::parse(&url)?.join(&loc)?.to_string(),
            _ => url,
        };
        Ok(FileMeta { commit, etag, size, url })
    }

    /// Downloads the file `pick` chooses into the cache under `hub_dir`; returns its snapshot
    /// path. `sha256` (a catalog's) must match, as must the hub's own LFS sha256.
    pub async fn pull(
        &self,
        hub_dir: &Path,
        repo: &str,
        pick: &Pick,
        revision: &str,
        sha256: Option<&str>,
    ) -> Result<PathBuf> {
        let cache = RepoCache::new(hub_dir, repo);
        let (commit, files) = self.repo_files(repo, revision).await?;
        let file = choose_file(&files, pick)?;
        let meta = self.file_meta(repo, &commit, &file).await?;
        let lfs_sha = (meta.etag.len() == 64 && meta.etag.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| meta.etag.to_ascii_lowercase());
        if let (Some(want), Some(lfs)) = (sha256, &lfs_sha) {
            if !want.eq_ignore_ascii_case(lfs) {
                bail!("{repo}/{file}: the hub's sha256 is {lfs}, the catalog expects {want}: not downloading");
            }
        }
        let blob = cache.blob(&meta.etag);
        let expected = Expected { size: meta.size, sha256: sha256.map(str::to_string).or(lfs_sha) };
        if blob.is_file() {
            eprintln!("{repo}/{file}: already downloaded");
        } else {
            let mut progress = Progress::new(&format!("{repo}/{file}"), meta.size);
            // The token goes to the hub only, never to the CDN a redirect names.
            let token = self.token.as_deref().filter(|_| meta.url.starts_with(&self.endpoint));
            download::download(
                &self.client,
                &meta.url,
                token,
                &cache.incomplete(&meta.etag),
                &blob,
                &expected,
                &mut progress,
            )
            .await?;
            progress.finish();
        }
        cache.link(revision, &meta.commit, &file, &meta.etag)
    }
}

fn header(h: &HeaderMap, name: &str) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}
