//! What `slm pull SOURCE` names: a catalog short name, a Hugging Face repo with an optional file
//! or quant (`Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF:Q4_K_M`, as llama.cpp's `-hf` takes it, or
//! `org/repo/file.gguf`), or a URL. Parsed here, before anything touches the network.

use anyhow::{bail, Result};

use super::catalog::{self, CatalogEntry};

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Catalog(&'static CatalogEntry),
    Hf { repo: String, pick: Pick, revision: String },
    Url(String),
}

/// Which file of a repo: a named file, a quant tag to match, or the default choice.
#[derive(Debug, Clone, PartialEq)]
pub enum Pick {
    File(String),
    Quant(String),
    Default,
}

pub fn parse(s: &str, revision: Option<&str>) -> Result<Source> {
    let s = s.trim();
    if s.starts_with("http://") || s.starts_with("https://") {
        return Ok(Source::Url(s.to_string()));
    }
    if let Some(e) = catalog::lookup(s) {
        return Ok(Source::Catalog(e));
    }
    // `hf.co/org/repo:tag` is Ollama's spelling of the same thing.
    let s = s.strip_prefix("hf.co/").or_else(|| s.strip_prefix("huggingface.co/")).unwrap_or(s);
    let (path, tag) = match s.split_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (s, None),
    };
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() < 2 || parts[..2].iter().any(|p| !valid_repo_part(p)) {
        bail!(
            "`{s}` is not a catalog name ({}), a Hugging Face repo (`org/name[:QUANT]`) or a URL",
            catalog::names().join(", ")
        );
    }
    let repo = format!("{}/{}", parts[0], parts[1]);
    let file = parts[2..].join("/");
    let pick = match (file.is_empty(), tag) {
        (false, Some(_)) => bail!("`{s}`: give a file or a `:QUANT` tag, not both"),
        (false, None) => Pick::File(file),
        (true, Some(t)) if t.ends_with(".gguf") => Pick::File(t.to_string()),
        (true, Some(t)) if !t.is_empty() => Pick::Quant(t.to_string()),
        _ => Pick::Default,
    };
    Ok(Source::Hf { repo, pick, revision: revision.unwrap_or("main").to_string() })
}

/// Hugging Face's repo-name rule: letters, digits, `-`, `_`, `.`; not starting with `-` or `.`.
fn valid_repo_part(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 96
        && !p.starts_with(['-', '.'])
        && !p.contains("..")
        && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The GGUF a quant tag (or the default, Q4_K_M, else the only GGUF) picks among a repo's
/// files. Split files (`-00001-of-00003.gguf`) and projector files are not candidates.
pub fn choose_file(files: &[String], pick: &Pick) -> Result<String> {
    if let Pick::File(f) = pick {
        return if files.iter().any(|x| x == f) {
            Ok(f.clone())
        } else {
            bail!("the repo has no file `{f}` (its GGUF files: {})", join(&ggufs(files)))
        };
    }
    let candidates: Vec<&String> = ggufs(files);
    let tag = match pick {
        Pick::Quant(q) => q.to_ascii_lowercase(),
        _ => "q4_k_m".into(),
    };
    let matching: Vec<&&String> = candidates.iter().filter(|f| has_tag(f, &tag)).collect();
    match (matching.as_slice(), pick) {
        ([one], _) => Ok((**one).clone()),
        ([], Pick::Default) if candidates.len() == 1 => Ok(candidates[0].clone()),
        ([], _) => bail!(
            "no GGUF file for `{tag}` in the repo (its GGUF files: {})",
            if candidates.is_empty() { "none".to_string() } else { join(&candidates) }
        ),
        (many, _) => bail!(
            "`{tag}` matches several files: {}; name one (`org/repo/FILE.gguf`)",
            many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn join(files: &[&String]) -> String {
    files.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

fn ggufs(files: &[String]) -> Vec<&String> {
    files
        .iter()
        .filter(|f| {
            let l = f.to_ascii_lowercase();
            l.ends_with(".gguf") && !l.contains("mmproj") && !is_split(&l)
        })
        .collect()
}

fn is_split(f: &str) -> bool {
    regex::Regex::new(r"-\d{5}-of-\d{5}\.gguf$").map(|r| r.is_match(f)).unwrap_or(false)
}

/// `tag` appears in the file name as a whole word (bounded by `.`, `-`, `_` or the ends).
fn has_tag(file: &str, tag: &str) -> bool {
    let name = file.rsplit('/').next().unwrap_or(file).to_ascii_lowercase();
    let stem = name.strip_suffix(".gguf").unwrap_or(&name);
    stem.match_indices(tag).any(|(i, _)| {
        let before = stem[..i].chars().last();
        let after = stem[i + tag.len()..].chars().next();
        let bound = |c: Option<char>| c.is_none_or(|c| matches!(c, '.' | '-' | '_'));
        bound(before) && bound(after)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_kind() {
        assert!(
            matches!(parse("qwen2.5-coder:1.5b", None).unwrap(), Source::Catalog(e) if e.name == "qwen2.5-coder:1.5b")
        );
        assert_eq!(
            parse("Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF:Q4_K_M", None).unwrap(),
            Source::Hf {
                repo: "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF".into(),
                pick: Pick::Quant("Q4_K_M".into()),
                revision: "main".into()
            }
        );
        assert_eq!(
            parse("hf.co/org/repo/sub/m.gguf", Some("v1")).unwrap(),
            Source::Hf { repo: "org/repo".into(), pick: Pick::File("sub/m.gguf".into()), revision: "v1".into() }
        );
        assert_eq!(
            parse("org/repo", None).unwrap(),
            Source::Hf { repo: "org/repo".into(), pick: Pick::Default, revision: "main".into() }
        );
        assert_eq!(parse("https://x.org/a.gguf", None).unwrap(), Source::Url("https://x.org/a.gguf".into()));
        for bad in ["llama", "../etc/passwd", "org/..", "a b/c", "org/repo/f.gguf:Q4_0", "-x/y"] {
            assert!(parse(bad, None).is_err(), "{bad}");
        }
    }

    #[test]
    fn picks_the_file_a_tag_names() {
        let files: Vec<String> = [
            "README.md",
            "m-q4_k_m.gguf",
            "m-q4_k_s.gguf",
            "m-q8_0.gguf",
            "m-Q4_0.gguf",
            "big-q4_k_m-00001-of-00002.gguf",
            "mmproj-q8_0.gguf",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(choose_file(&files, &Pick::Quant("Q4_K_M".into())).unwrap(), "m-q4_k_m.gguf");
        assert_eq!(choose_file(&files, &Pick::Quant("q4_0".into())).unwrap(), "m-Q4_0.gguf");
        assert_eq!(choose_file(&files, &Pick::Quant("Q8_0".into())).unwrap(), "m-q8_0.gguf");
        assert_eq!(choose_file(&files, &Pick::Default).unwrap(), "m-q4_k_m.gguf");
        assert!(choose_file(&files, &Pick::Quant("Q4_K".into())).is_err());
        assert!(choose_file(&files, &Pick::Quant("Q2_K".into())).unwrap_err().to_string().contains("m-q8_0.gguf"));
        assert!(choose_file(&files, &Pick::File("nope.gguf".into())).is_err());
        let one = vec!["only.Q5_K_M.gguf".to_string()];
        assert_eq!(choose_file(&one, &Pick::Default).unwrap(), "only.Q5_K_M.gguf");
    }
}
