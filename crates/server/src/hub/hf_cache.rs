//! The Hugging Face cache layout, as `huggingface_hub` writes and reads it:
//! `$HF_HUB_CACHE` (default `$HF_HOME/hub`, `~/.cache/huggingface/hub`) holds
//! `models--{org}--{name}/` with `blobs/{etag}` (the bytes; `{etag}.incomplete` while
//! downloading), `snapshots/{commit}/{file}` (a relative symlink to its blob) and
//! `refs/{revision}` (the commit a branch pointed at). `hf.rs` writes it; `local.rs` lists it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub fn hub_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HF_HUB_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    match std::env::var_os("HF_HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join("hub"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/huggingface/hub"),
    }
}

pub struct RepoCache {
    pub repo: String,
    pub root: PathBuf,
}

impl RepoCache {
    pub fn new(hub: &Path, repo: &str) -> Self {
        Self { repo: repo.to_string(), root: hub.join(format!("models--{}", repo.replace('/', "--"))) }
    }

    pub fn blob(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(etag)
    }

    pub fn incomplete(&self, etag: &str) -> PathBuf {
        self.root.join("blobs").join(format!("{etag}.incomplete"))
    }

    pub fn snapshot(&self, commit: &str, file: &str) -> PathBuf {
        self.root.join("snapshots").join(commit).join(file)
    }

    /// The commit `revision` names: itself when it is a commit hash, else what refs/ says.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit(revision) {
            return Some(revision.to_string());
        }
        std::fs::read_to_string(self.root.join("refs").join(revision)).ok().map(|s| s.trim().to_string())
    }

    /// The cached file for `revision`, if its snapshot link resolves.
    pub fn cached(&self, revision: &str, file: &str) -> Option<PathBuf> {
        let p = self.snapshot(&self.commit_of(revision)?, file);
        p.is_file().then_some(p)
    }

    /// Points `snapshots/{commit}/{file}` at `blobs/{etag}` and `refs/{revision}` at `commit`.
    pub fn link(&self, revision: &str, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let link = self.snapshot(commit, file);
        let dir = link.parent().context("snapshot path has no parent")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        // From snapshots/{commit}/{a/b/}file up to the repo root: one `..` per directory.
        let depth = 2 + file.matches('/').count();
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(etag);
        let _ = std::fs::remove_file(&link);
        symlink(&target, &link).with_context(|| format!("cannot link {}", link.display()))?;
        if revision != commit {
            let refs = self.root.join("refs");
            std::fs::create_dir_all(&refs)?;
            std::fs::write(refs.join(revision), commit)?;
        }
        Ok(link)
    }

    /// Removes one snapshot file; its blob too when no other snapshot links to it, and the
    /// repo's folder when nothing is left in it.
    pub fn remove(&self, commit: &str, file: &str) -> Result<()> {
        let link = self.snapshot(commit, file);
        let blob = std::fs::canonicalize(&link).ok();
        std::fs::remove_file(&link).with_context(|| format!("cannot remove {}", link.display()))?;
        let remaining = self.files();
        if let Some(blob) = blob {
            let used = remaining.iter().any(|f| std::fs::canonicalize(&f.path).ok().as_ref() == Some(&blob));
            if !used {
                let _ = std::fs::remove_file(&blob);
            }
        }
        let mut dir = link.parent().map(Path::to_path_buf);
        let snapshots = self.root.join("snapshots");
        while let Some(d) = dir.filter(|d| d.starts_with(&snapshots) && *d != snapshots) {
            if std::fs::remove_dir(&d).is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        if remaining.is_empty() {
            std::fs::remove_dir_all(&self.root).with_context(|| format!("cannot remove {}", self.root.display()))?;
        }
        Ok(())
    }

    /// Every file in every snapshot.
    pub fn files(&self) -> Vec<CachedFile> {
        let mut out = Vec::new();
        let Ok(commits) = std::fs::read_dir(self.root.join("snapshots")) else { return out };
        for c in commits.flatten() {
            let commit = c.file_name().to_string_lossy().to_string();
            walk(&c.path(), &mut |p| {
                if let Ok(rel) = p.strip_prefix(c.path()) {
                    out.push(CachedFile {
                        repo: self.repo.clone(),
                        commit: commit.clone(),
                        file: rel.to_string_lossy().to_string(),
                        path: p.to_path_buf(),
                    });
                }
            });
        }
        out.sort_by(|a, b| (&a.file, &a.commit).cmp(&(&b.file, &b.commit)));
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CachedFile {
    pub repo: String,
    pub commit: String,
    /// Path within the repo.
    pub file: String,
    /// The snapshot link.
    pub path: PathBuf,
}

/// Every cached model repo (`models--*`), by repo id.
pub fn repos(hub: &Path) -> Vec<RepoCache> {
    let mut out: Vec<RepoCache> = std::fs::read_dir(hub)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let id = name.strip_prefix("models--")?.replacen("--", "/", 1);
            Some(RepoCache { repo: id, root: e.path() })
        })
        .collect();
    out.sort_by(|a, b| a.repo.cmp(&b.repo));
    out
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, f);
        } else {
            f(&p);
        }
    }
}

pub fn is_commit(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(unix)]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

// Without symlinks (as huggingface_hub does on Windows without developer mode): a copy.
#[cfg(not(unix))]
fn symlink(target: &Path, link: &Path) -> std::io::Result<()> {
    std::fs::copy(link.parent().unwrap_or(Path::new(".")).join(target), link).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_lists_and_removes_like_huggingface_hub() {
        let hub = std::env::temp_dir().join(format!("slm-hf-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&hub);
        let r = RepoCache::new(&hub, "org/m-GGUF");
        assert!(r.root.ends_with("models--org--m-GGUF"));
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(r.root.join("blobs")).unwrap();
        std::fs::write(r.blob("e1"), b"one").unwrap();
        r.link("main", commit, "a.gguf", "e1").unwrap();
        r.link("main", commit, "sub/b.gguf", "e1").unwrap();
        assert_eq!(std::fs::read(r.cached("main", "sub/b.gguf").unwrap()).unwrap(), b"one");
        assert_eq!(std::fs::read_link(r.snapshot(commit, "a.gguf")).unwrap(), PathBuf::from("../../blobs/e1"));
        assert_eq!(r.commit_of("main").as_deref(), Some(commit));
        assert!(r.cached("v2", "a.gguf").is_none());
        let ids: Vec<String> = repos(&hub).into_iter().map(|r| r.repo).collect();
        assert_eq!(ids, ["org/m-GGUF"]);
        assert_eq!(r.files().len(), 2);
        r.remove(commit, "a.gguf").unwrap();
        assert!(r.blob("e1").exists(), "still linked from sub/b.gguf");
        r.remove(commit, "sub/b.gguf").unwrap();
        assert!(!r.root.exists());
        let _ = std::fs::remove_dir_all(&hub);
    }
}
