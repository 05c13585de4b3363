//! The models on this box: every `*.gguf` in slm's models directory and every GGUF in the
//! Hugging Face cache, each with the name `slm serve --model`, `slm rm` and (later) requests
//! use for it — the catalog's short name when the file is a catalog model, else the file's stem
//! (models directory) or `org/repo/file` (HF cache). `slm list` prints them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::catalog;
use super::hf_cache::{self, RepoCache};

#[derive(Debug, Clone, PartialEq)]
pub enum Location {
    ModelsDir,
    HfCache { repo: String, commit: String, file: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Installed {
    pub name: String,
    /// Other names that pick it: the file stem, the catalog name, `org/repo:file`.
    pub aliases: Vec<String>,
    pub path: PathBuf,
    pub size: u64,
    pub location: Location,
}

impl Installed {
    pub fn answers_to(&self, name: &str) -> bool {
        self.name == name || self.aliases.iter().any(|a| a == name) || self.path == Path::new(name)
    }
}

/// Everything installed under `models_dir` and `hub`, models directory first; a file that
/// both hold (same catalog name) is listed once, from the models directory.
pub fn installed(models_dir: &Path, hub: &Path) -> Vec<Installed> {
    let mut out: Vec<Installed> = Vec::new();
    let mut local: Vec<PathBuf> = std::fs::read_dir(models_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf") && p.is_file())
        .collect();
    local.sort();
    for path in local {
        let file = path.file_name().unwrap_or_default().to_string_lossy().to_string();
        let stem = file.trim_end_matches(".gguf").to_string();
        let (name, aliases) = match catalog::for_file(None, &file) {
            Some(e) => (e.name.to_string(), vec![stem]),
            None => (stem, vec![]),
        };
        out.push(Installed { size: size_of(&path), name, aliases, path, location: Location::ModelsDir });
    }
    for repo in hf_cache::repos(hub) {
        for f in repo.files() {
            if !f.file.to_ascii_lowercase().ends_with(".gguf") || !f.path.is_file() {
                continue;
            }
            let full = format!("{}/{}", f.repo, f.file.trim_end_matches(".gguf"));
            let (name, aliases) = match catalog::for_file(Some(&f.repo), &f.file) {
                Some(e) => (e.name.to_string(), vec![full]),
                None => (full, vec![]),
            };
            if out.iter().any(|o| o.name == name) {
                continue;
            }
            let location = Location::HfCache { repo: f.repo.clone(), commit: f.commit.clone(), file: f.file.clone() };
            out.push(Installed { size: size_of(&f.path), name, aliases, path: f.path, location });
        }
    }
    out
}

fn size_of(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

pub fn find(models_dir: &Path, hub: &Path, name: &str) -> Option<Installed> {
    installed(models_dir, hub).into_iter().find(|m| m.answers_to(name))
}

/// Deletes an installed model: the file in the models directory, or the snapshot link (and
/// its blob, when nothing else links it) in the HF cache.
pub fn remove(models_dir: &Path, hub: &Path, name: &str) -> Result<Installed> {
    let Some(m) = find(models_dir, hub, name) else {
        let names: Vec<String> = installed(models_dir, hub).into_iter().map(|m| m.name).collect();
        bail!(
            "no installed model `{name}` (installed: {})",
            if names.is_empty() { "none".into() } else { names.join(", ") }
        );
    };
    match &m.location {
        Location::ModelsDir => {
            std::fs::remove_file(&m.path).with_context(|| format!("cannot remove {}", m.path.display()))?;
            let _ = std::fs::remove_file(m.path.with_extension("gguf.stamp"));
        }
        Location::HfCache { repo, commit, file } => RepoCache::new(hub, repo).remove(commit, file)?,
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_files_in_both_places_and_removes_them() {
        let root = std::env::temp_dir().join(format!("slm-local-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let (models, hub) = (root.join("models"), root.join("hub"));
        std::fs::create_dir_all(&models).unwrap();
        std::fs::write(models.join("gemma-3-270m-q4_k_m.gguf"), b"g").unwrap();
        std::fs::write(models.join("mine.gguf"), b"m").unwrap();
        std::fs::write(models.join("notes.txt"), b"x").unwrap();
        let r = RepoCache::new(&hub, "org/x-GGUF");
        std::fs::create_dir_all(r.root.join("blobs")).unwrap();
        std::fs::write(r.blob("e"), b"xx").unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        r.link("main", commit, "x-Q4_K_M.gguf", "e").unwrap();
        let all = installed(&models, &hub);
        let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["gemma3:270m", "mine", "org/x-GGUF/x-Q4_K_M"]);
        assert!(all[0].answers_to("gemma-3-270m-q4_k_m"));
        assert_eq!(all[2].size, 2);
        assert!(remove(&models, &hub, "nope").unwrap_err().to_string().contains("mine"));
        remove(&models, &hub, "org/x-GGUF/x-Q4_K_M").unwrap();
        assert!(!r.root.exists());
        remove(&models, &hub, "gemma3:270m").unwrap();
        assert_eq!(installed(&models, &hub).len(), 1);
        let _ = std::fs::remove_dir_all(&root);
    }
}
