//! A cache of repacked weights: the kernels' tiles for one GGUF, written once after its first
//! load and mapped on later loads, so a warm load maps the packed bytes instead of repacking
//! them (most of the load time); the weights then live in the page cache, shared and
//! reclaimable, as llama.cpp's mapped GGUFs do. Files live in `$SLM_PACK_CACHE` (default
//! `$SLM_HOME/packed`; `off` disables the cache), named by a key over the GGUF's path, size,
//! modification time and first 64 KiB and the packed layout's version. Every stored weight
//! is checked against the shape its tensor packs to (`kernels::Layout`) and against the
//! tensor's type and size, so a stale or damaged file only costs a repack. A save also deletes
//! cache files whose GGUF is gone or changed.
//!
//! `Gguf::open` opens it, `qlinear::pack_in_place` takes weights from it and records the ones
//! it packs, and `Model::load` saves it when anything was packed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};

use crate::layers::kernels::PosWriter;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::quantized::GgmlDType;

use crate::layers::kernels::PackedWeights;
use crate::layers::qlinear::layout_for;

/// Bump when `PackedWeights`' layout or this file format changes.
const LAYOUT_VERSION: u32 = 2;
const MAGIC: &[u8; 8] = b"SLMPACK\0";
/// Smaller files (the tests' tiny models) pack faster than a cache file is worth.
const MIN_CACHED_FILE: u64 = 16 << 20;

/// Which GGUF a cache file was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    path: String,
    len: u64,
    mtime_ns: u64,
}

impl Source {
    fn of(path: &Path) -> Option<Self> {
        let path = std::fs::canonicalize(path).ok()?;
        let meta = std::fs::metadata(&path).ok()?;
        let mtime_ns = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos() as u64;
        Some(Self { path: path.to_string_lossy().into_owned(), len: meta.len(), mtime_ns })
    }

    fn write(&self, w: &mut impl Write) -> std::io::Result<()> {
        w.write_all(MAGIC)?;
        w.write_all(&LAYOUT_VERSION.to_le_bytes())?;
        w.write_all(&(self.path.len() as u32).to_le_bytes())?;
        w.write_all(self.path.as_bytes())?;
        w.write_all(&self.len.to_le_bytes())?;
        w.write_all(&self.mtime_ns.to_le_bytes())
    }

    /// The source a cache file names, if it is one of this version.
    fn read(r: &mut impl Read) -> Option<Self> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).ok()?;
        if &magic != MAGIC || read_u32(r)? != LAYOUT_VERSION {
            return None;
        }
        let n = read_u32(r)? as usize;
        if n > 4096 {
            return None;
        }
        let mut path = vec![0u8; n];
        r.read_exact(&mut path).ok()?;
        Some(Self { path: String::from_utf8(path).ok()?, len: read_u64(r)?, mtime_ns: read_u64(r)? })
    }
}

fn read_u32(r: &mut impl Read) -> Option<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b).ok()?;
    Some(u32::from_le_bytes(b))
}

fn read_u64(r: &mut impl Read) -> Option<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).ok()?;
    Some(u64::from_le_bytes(b))
}

const DTYPES: [(GgmlDType, u32); 10] = [
    (GgmlDType::Q4_0, 2),
    (GgmlDType::Q4_1, 3),
    (GgmlDType::Q5_0, 6),
    (GgmlDType::Q5_1, 7),
    (GgmlDType::Q8_0, 8),
    (GgmlDType::Q2K, 10),
    (GgmlDType::Q3K, 11),
    (GgmlDType::Q4K, 12),
    (GgmlDType::Q5K, 13),
    (GgmlDType::Q6K, 14),
];

fn dtype_code(d: GgmlDType) -> Option<u32> {
    DTYPES.iter().find(|(t, _)| *t == d).map(|(_, c)| *c)
}

fn dtype_of(code: u32) -> Option<GgmlDType> {
    DTYPES.iter().find(|(_, c)| *c == code).map(|(t, _)| *t)
}

/// A weight of this load: its tensor's name and type, and the packed tiles.
type UsedWeight = (String, GgmlDType, Arc<PackedWeights>);

struct Stored {
    dtype: GgmlDType,
    n: usize,
    k: usize,
    weights: Arc<PackedWeights>,
}

pub struct PackCache {
    dir: PathBuf,
    file: PathBuf,
    source: Source,
    stored: HashMap<String, Stored>,
    /// Every packed weight of this load, from the file or packed now, and whether any was
    /// packed now (then the file is written).
    used: Mutex<(Vec<UsedWeight>, bool)>,
}

/// Where cache files go: `$SLM_PACK_CACHE`, else `$SLM_HOME/packed`, else
/// `~/.cache/slm/packed`; None when set to `off` (or `0`, or empty).
pub fn default_dir() -> Option<PathBuf> {
    match std::env::var_os("SLM_PACK_CACHE") {
        Some(v) if v.is_empty() || v == "off" || v == "0" => None,
        Some(v) => Some(PathBuf::from(v)),
        None => Some(match std::env::var_os("SLM_HOME") {
            Some(h) => PathBuf::from(h).join("packed"),
            None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/slm/packed"),
        }),
    }
}

impl PackCache {
    /// The cache for `gguf` in `dir`, with what a file there holds for it (nothing when there
    /// is none, or it does not read back whole).
    pub fn open(dir: &Path, gguf: &Path) -> Option<Self> {
        let source = Source::of(gguf)?;
        if source.len < MIN_CACHED_FILE {
            return None;
        }
        let stem = Path::new(&source.path).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let file = dir.join(format!("{stem}-{:016x}.slmpack", key(&source, gguf)));
        let stored = File::open(&file).ok().and_then(|f| {
            // SAFETY: cache files are written under a temporary name and renamed into place,
            // never changed in place, so the mapped bytes stay as they were read; another
            // program truncating the file would fault the process, as for any mapped file.
            let map = unsafe { memmap2::MmapOptions::new().populate().map(&f) }.ok()?;
            read_entries(&Arc::new(map), &source)
        });
        if stored.is_none() && file.exists() {
            let _ = std::fs::remove_file(&file);
        }
        let used = Mutex::new((Vec::new(), false));
        Some(Self { dir: dir.to_path_buf(), file, source, stored: stored.unwrap_or_default(), used })
    }

    /// How many weights the file held.
    pub fn num_stored(&self) -> usize {
        self.stored.len()
    }

    /// The stored weight `name`, if it is of this type and size.
    pub fn take(&self, name: &str, dtype: GgmlDType, n: usize, k: usize) -> Option<Arc<PackedWeights>> {
        let s = self.stored.get(name).filter(|s| s.dtype == dtype && s.n == n && s.k == k)?;
        self.used.lock().unwrap().0.push((name.to_string(), dtype, s.weights.clone()));
        Some(s.weights.clone())
    }

    pub fn record(&self, name: &str, dtype: GgmlDType, weights: Arc<PackedWeights>) {
        let mut used = self.used.lock().unwrap();
        used.0.push((name.to_string(), dtype, weights));
        used.1 = true;
    }

    /// Whether `save` would write (something was packed during this load).
    pub fn needs_save(&self) -> bool {
        self.used.lock().unwrap().1
    }

    /// Writes the file (through a temporary name, so a reader never sees half of it) and
    /// removes cache files of GGUFs that are gone or changed.
    pub fn save(&self) -> std::io::Result<()> {
        let used = std::mem::take(&mut *self.used.lock().unwrap());
        if !used.1 {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        // Leftovers of writers that died go first: they may be as large as this file.
        self.collect_garbage();
        let thread = format!("{:?}", std::thread::current().id()).replace(|c: char| !c.is_ascii_digit(), "");
        let tmp = self.dir.join(format!(
            ".{}.{}.{thread}.tmp",
            self.file.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id(),
        ));
        let written = (|| {
            let mut w = PosWriter { inner: BufWriter::with_capacity(8 << 20, File::create(&tmp)?), pos: 0 };
            self.source.write(&mut w)?;
            w.write_all(&(used.0.len() as u32).to_le_bytes())?;
            for (name, dtype, p) in &used.0 {
                let code = dtype_code(*dtype).unwrap_or(0);
                w.write_all(&(name.len() as u32).to_le_bytes())?;
                w.write_all(name.as_bytes())?;
                w.write_all(&code.to_le_bytes())?;
                w.write_all(&(p.n as u64).to_le_bytes())?;
                w.write_all(&(p.k as u64).to_le_bytes())?;
                p.write_to(&mut w)?;
            }
            w.inner.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, &self.file)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        self.collect_garbage();
        written
    }

    fn collect_garbage(&self) {
        for e in std::fs::read_dir(&self.dir).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            let stale = if name.ends_with(".tmp") {
                // `.{file}.{pid}.{thread}.tmp`: a writer that is gone left it (or it is old).
                let pid = name.rsplit('.').nth(2).and_then(|p| p.parse::<u32>().ok());
                let gone = pid.is_some_and(|p| p != std::process::id() && !Path::new(&format!("/proc/{p}")).exists());
                let age = e.metadata().ok().and_then(|m| m.modified().ok()).and_then(|t| t.elapsed().ok());
                (cfg!(target_os = "linux") && gone) || age.is_some_and(|a| a.as_secs() > 3600)
            } else if name.ends_with(".slmpack") && p != self.file {
                match File::open(&p).ok().and_then(|f| Source::read(&mut BufReader::new(f))) {
                    Some(src) => Source::of(Path::new(&src.path)).as_ref() != Some(&src),
                    None => true,
                }
            } else {
                false
            };
            if stale {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// FNV-1a over the source and the file's first 64 KiB (its header: a file rewritten in
/// place with the same size and time still gets a new key).
fn key(source: &Source, gguf: &Path) -> u64 {
    let mut head = vec![0u8; 64 << 10];
    let n = File::open(gguf).and_then(|mut f| f.read(&mut head)).unwrap_or(0);
    let mut h: u64 = 0xcbf29ce484222325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ b as u64).wrapping_mul(0x100000001b3);
        }
    };
    eat(&LAYOUT_VERSION.to_le_bytes());
    eat(source.path.as_bytes());
    eat(&source.len.to_le_bytes());
    eat(&source.mtime_ns.to_le_bytes());
    eat(&head[..n]);
    h
}

fn read_entries(map: &Arc<memmap2::Mmap>, source: &Source) -> Option<HashMap<String, Stored>> {
    let mut r: &[u8] = map;
    if Source::read(&mut r)? != *source {
        return None;
    }
    let count = read_u32(&mut r)?;
    let mut pos = map.len() - r.len();
    let mut out = HashMap::new();
    for _ in 0..count {
        let mut r = map.get(pos..)?;
        let len = read_u32(&mut r)? as usize;
        if len > 1024 || r.len() < len {
            return None;
        }
        let name = String::from_utf8(r[..len].to_vec()).ok()?;
        r = &r[len..];
        let dtype = dtype_of(read_u32(&mut r)?)?;
        let n = usize::try_from(read_u64(&mut r)?).ok()?;
        let k = usize::try_from(read_u64(&mut r)?).ok()?;
        // A shape no real tensor has would describe arrays past the file: refused below, but
        // the layout arithmetic must not overflow first.
        if n.checked_mul(k)? > (source.len as usize).saturating_mul(4) {
            return None;
        }
        let layout = layout_for(dtype, n, k)?;
        pos = map.len() - r.len();
        let weights = Arc::new(PackedWeights::from_map(map, &mut pos, &layout)?);
        out.insert(name, Stored { dtype, n, k, weights });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_codes_round_trip() {
        for (t, c) in DTYPES {
            assert_eq!(dtype_of(c), Some(t));
            assert_eq!(dtype_code(t), Some(c));
        }
        assert_eq!(dtype_code(GgmlDType::F16), None);
    }

    #[test]
    fn small_files_are_not_cached_and_missing_ones_have_no_source() {
        let dir = std::env::temp_dir().join(format!("slm-pack-cache-small-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("tiny.gguf");
        std::fs::write(&f, b"GGUF").unwrap();
        assert!(PackCache::open(&dir, &f).is_none());
        assert!(PackCache::open(&dir, &dir.join("missing.gguf")).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
