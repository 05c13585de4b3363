//! Opens a GGUF file: typed access to its metadata, loads its tensors, and builds the model for
//! `general.architecture`. Called by `Model::load`; the tokenizer and chat template read the
//! same `Gguf`.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Device;

use crate::error::{EngineError, Result};

/// A parsed GGUF header plus an open reader for its tensor data, and the file mapped into
/// memory so tensors the kernels repack are read in place, with no copy.
pub struct Gguf {
    pub path: String,
    content: Content,
    reader: BufReader<File>,
    map: Option<memmap2::Mmap>,
    /// Repacked weights from an earlier load, and the record of this one's (pack_cache.rs).
    pub(crate) pack_cache: Option<crate::pack_cache::PackCache>,
}

/// A tensor's bytes as the file holds them, borrowed from the mapping; `dims` outermost
/// first, as candle's shapes.
pub struct TensorView<'a> {
    pub dtype: GgmlDType,
    pub dims: Vec<usize>,
    pub bytes: &'a [u8],
}

impl Gguf {
    /// Opens `path` with no pack cache: `Model::load` opens one beside it when it loads weights.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path_str = path.as_ref().display().to_string();
        let file = File::open(path.as_ref())
            .map_err(|e| EngineError::Io { path: path_str.clone(), message: e.to_string() })?;
        // SAFETY: the mapping is read-only and lives only while the model loads (every tensor
        // taken from it is copied or repacked); slm never writes model files. Another process
        // truncating the file meanwhile would fault the loader, as for llama.cpp's mmap.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok();
        let mut reader = BufReader::new(file);
        // The header parser asks for its position once per string (300,000 for a 150k
        // vocabulary): through the mapping that is free, through a file a system call.
        let content = match &map {
            Some(m) => Content::read(&mut std::io::Cursor::new(&m[..])),
            None => Content::read(&mut reader),
        }
        .map_err(|e| EngineError::Gguf { path: path_str.clone(), message: format!("not a readable GGUF file: {e}") })?;
        Ok(Self { path: path_str, content, reader, map, pack_cache: None })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.content.metadata.get(key)
    }

    fn bad(&self, message: String) -> EngineError {
        EngineError::Gguf { path: self.path.clone(), message }
    }

    pub fn architecture(&self) -> Result<String> {
        self.str("general.architecture")
    }

    pub fn str(&self, key: &str) -> Result<String> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(v) => Err(self.bad(format!("metadata `{key}` is not a string: {v:?}"))),
            None => Err(self.bad(format!("missing metadata `{key}`"))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Option<String> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    }

    /// Any integer type as usize (GGUF writers differ in the width they pick).
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        let v = match self.get(key) {
            None => return Ok(None),
            Some(v) => v,
        };
        let n: i128 = match v {
            Value::U8(x) => *x as i128,
            Value::I8(x) => *x as i128,
            Value::U16(x) => *x as i128,
            Value::I16(x) => *x as i128,
            Value::U32(x) => *x as i128,
            Value::I32(x) => *x as i128,
            Value::U64(x) => *x as i128,
            Value::I64(x) => *x as i128,
            other => return Err(self.bad(format!("metadata `{key}` is not an integer: {other:?}"))),
        };
        usize::try_from(n).map(Some).map_err(|_| self.bad(format!("metadata `{key}` is negative: {n}")))
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| self.bad(format!("missing metadata `{key}`")))
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x)),
            Some(Value::F64(x)) => Ok(Some(*x as f32)),
            Some(other) => Err(self.bad(format!("metadata `{key}` is not a float: {other:?}"))),
        }
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        self.opt_f32(key)?.ok_or_else(|| self.bad(format!("missing metadata `{key}`")))
    }

    pub fn opt_bool(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn str_array(&self, key: &str) -> Result<Vec<String>> {
        let arr = self.opt_array(key, "a string", |v| match v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })?;
        arr.ok_or_else(|| self.bad(format!("missing metadata `{key}`")))
    }

    pub fn opt_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>> {
        self.opt_array(key, "a float", |v| match v {
            Value::F32(x) => Some(*x),
            Value::F64(x) => Some(*x as f32),
            _ => None,
        })
    }

    pub fn opt_i32_array(&self, key: &str) -> Result<Option<Vec<i32>>> {
        self.opt_array(key, "an integer", |v| match v {
            Value::I32(x) => Some(*x),
            Value::U32(x) => Some(*x as i32),
            Value::I8(x) => Some(*x as i32),
            Value::U8(x) => Some(*x as i32),
            _ => None,
        })
    }

    /// An array whose every element `elem` converts (`what` names the type for the error).
    fn opt_array<T>(&self, key: &str, what: &str, elem: impl Fn(&Value) -> Option<T>) -> Result<Option<Vec<T>>> {
        let arr = match self.get(key) {
            Some(Value::Array(a)) => a,
            Some(v) => return Err(self.bad(format!("metadata `{key}` is not an array: {v:?}"))),
            None => return Ok(None),
        };
        arr.iter()
            .map(|v| {
                elem(v).ok_or_else(|| self.bad(format!("metadata `{key}` holds something other than {what}: {v:?}")))
            })
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }

    /// Values in all tensors (saturating: a crafted header cannot overflow it).
    pub fn num_params(&self) -> u64 {
        self.content
            .tensor_infos
            .values()
            .map(|t| t.shape.dims().iter().fold(1u64, |a, &d| a.saturating_mul(d as u64)))
            .fold(0u64, u64::saturating_add)
    }

    /// Every tensor's name, in no particular order.
    pub fn tensor_names(&self) -> Vec<String> {
        self.content.tensor_infos.keys().cloned().collect()
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The bytes of tensor `name` in place (None without a mapping); a missing tensor, or one
    /// whose data would run past the file, is an error naming it.
    pub fn view(&self, name: &str) -> Result<Option<TensorView<'_>>> {
        let Some(map) = &self.map else { return Ok(None) };
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| EngineError::MissingTensor { path: self.path.clone(), name: name.into() })?;
        let dtype = info.ggml_dtype;
        let elems = info.shape.dims().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let size = elems
            .filter(|e| e % dtype.block_size() == 0)
            .and_then(|e| (e / dtype.block_size()).checked_mul(dtype.type_size()))
            .ok_or_else(|| {
                self.bad(format!("tensor `{name}`: its dims {:?} are not whole {dtype:?} blocks", info.shape))
            })?;
        let start = usize::try_from(self.content.tensor_data_offset.saturating_add(info.offset)).unwrap_or(usize::MAX);
        let bytes = start.checked_add(size).and_then(|end| map.get(start..end)).ok_or_else(|| {
            self.bad(format!("tensor `{name}` needs {size} bytes at offset {start}, past the end of the file"))
        })?;
        Ok(Some(TensorView { dtype, dims: info.shape.dims().to_vec(), bytes }))
    }

    /// Loads one tensor; a missing one is an error naming it and the file.
    pub fn tensor(&mut self, name: &str) -> Result<QTensor> {
        if !self.has_tensor(name) {
            return Err(EngineError::MissingTensor { path: self.path.clone(), name: name.into() });
        }
        // From the mapping: one copy (candle's reader makes two, through a read buffer).
        let loaded = match self.view(name)? {
            Some(v) => candle_core::quantized::ggml_file::qtensor_from_ggml(v.dtype, v.bytes, v.dims, &Device::Cpu),
            None => self.content.tensor(&mut self.reader, name, &Device::Cpu),
        };
        loaded.map_err(|e| self.bad(format!("cannot read tensor `{name}`: {e}")))
    }

    pub fn opt_tensor(&mut self, name: &str) -> Result<Option<QTensor>> {
        if self.has_tensor(name) {
            self.tensor(name).map(Some)
        } else {
            Ok(None)
        }
    }

    /// A 1-D tensor (norm weight, bias) as f32 values.
    pub fn vector(&mut self, name: &str) -> Result<Vec<f32>> {
        let t = self.tensor(name)?;
        let d = t.dequantize(&Device::Cpu)?;
        Ok(d.flatten_all()?.to_vec1::<f32>()?)
    }

    pub fn opt_vector(&mut self, name: &str) -> Result<Option<Vec<f32>>> {
        if self.has_tensor(name) {
            self.vector(name).map(Some)
        } else {
            Ok(None)
        }
    }
}
