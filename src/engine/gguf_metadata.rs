//! Typed reads of a GGUF file's metadata, whatever width its writer gave each number.

use candle_core::quantized::gguf_file::{Content, Value};

/// The metadata of one GGUF file.
#[derive(Clone, Copy)]
pub(crate) struct Metadata<'a>(pub &'a Content);

impl Metadata<'_> {
    pub fn string(&self, key: &str) -> Option<String> {
        match self.0.metadata.get(key)? {
            Value::String(s) => Some(s.clone()),
            _ => None,
        }
    }

    /// An integer however the writer typed it (llama.cpp mostly uses u32).
    pub fn integer(&self, key: &str) -> Option<u32> {
        match self.0.metadata.get(key)? {
            Value::U8(v) => Some(u32::from(*v)),
            Value::U16(v) => Some(u32::from(*v)),
            Value::U32(v) => Some(*v),
            Value::U64(v) => u32::try_from(*v).ok(),
            Value::I8(v) => u32::try_from(*v).ok(),
            Value::I16(v) => u32::try_from(*v).ok(),
            Value::I32(v) => u32::try_from(*v).ok(),
            Value::I64(v) => u32::try_from(*v).ok(),
            _ => None,
        }
    }

    /// An integer the model cannot be built without.
    pub fn required(&self, key: &str) -> Result<u32, String> {
        self.integer(key)
            .ok_or_else(|| format!("the GGUF file has no `{key}`"))
    }

    pub fn float(&self, key: &str) -> Option<f64> {
        match self.0.metadata.get(key)? {
            Value::F32(v) => Some(f64::from(*v)),
            Value::F64(v) => Some(*v),
            _ => None,
        }
    }

    /// The number of items of an array (0 when the key is missing).
    pub fn array_len(&self, key: &str) -> usize {
        match self.0.metadata.get(key) {
            Some(Value::Array(items)) => items.len(),
            _ => 0,
        }
    }

    pub fn boolean(&self, key: &str) -> Option<bool> {
        match self.0.metadata.get(key)? {
            Value::Bool(v) => Some(*v),
            _ => None,
        }
    }

    /// An array of strings (a vocabulary).
    pub fn strings(&self, key: &str) -> Option<Vec<String>> {
        self.array(key, |v| match v {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
    }

    /// An array of floats (token scores).
    pub fn floats(&self, key: &str) -> Option<Vec<f32>> {
        self.array(key, |v| match v {
            Value::F32(f) => Some(*f),
            _ => None,
        })
    }

    /// An array of integers (token types), whatever width the writer chose.
    pub fn integers(&self, key: &str) -> Option<Vec<i32>> {
        self.array(key, |v| match v {
            Value::I32(i) => Some(*i),
            Value::U32(i) => i32::try_from(*i).ok(),
            Value::I64(i) => i32::try_from(*i).ok(),
            Value::U8(i) => Some(i32::from(*i)),
            _ => None,
        })
    }

    /// Every item of an array, or `None` if any is of another type.
    fn array<T>(&self, key: &str, item: impl Fn(&Value) -> Option<T>) -> Option<Vec<T>> {
        match self.0.metadata.get(key)? {
            Value::Array(items) => items.iter().map(item).collect(),
            _ => None,
        }
    }
}
