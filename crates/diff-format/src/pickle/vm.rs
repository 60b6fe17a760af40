//! The pickle virtual machine: the opcodes of protocols 2–5 that state dicts use, over an
//! object arena (so that mutating a memoised list or dict is seen by every reference to it, as
//! in Python), with an allow-list of globals that are interpreted, never imported.

use super::PickleError;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Nesting deeper than this, when turning the arena into a [`Value`] tree, is refused; it also
/// stops self-referencing containers from looping.
const MAX_DEPTH: usize = 128;
/// Objects in the arena; bounds memory on hostile input (about 0.5 GB at most; an SD state dict
/// needs ~50k objects, a Lightning checkpoint with optimizer state a few hundred thousand).
const MAX_OBJECTS: usize = 10_000_000;

/// The element type of a PyTorch storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StorageDtype {
    /// `torch.float64` (`DoubleStorage`).
    F64,
    /// `torch.float32` (`FloatStorage`).
    F32,
    /// `torch.float16` (`HalfStorage`).
    F16,
    /// `torch.bfloat16` (`BFloat16Storage`).
    BF16,
    /// `torch.int64` (`LongStorage`).
    I64,
    /// `torch.int32` (`IntStorage`).
    I32,
    /// `torch.int16` (`ShortStorage`).
    I16,
    /// `torch.int8` (`CharStorage`).
    I8,
    /// `torch.uint8` (`ByteStorage`, and `UntypedStorage`).
    U8,
    /// `torch.bool` (`BoolStorage`).
    Bool,
    /// `torch.float8_e4m3fn` (only through `_rebuild_tensor_v3`).
    F8E4M3,
    /// `torch.float8_e5m2` (only through `_rebuild_tensor_v3`).
    F8E5M2,
}

impl StorageDtype {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool | Self::F8E4M3 | Self::F8E5M2 => 1,
        }
    }

    /// The safetensors dtype name (`"F32"`, `"BF16"`, ...).
    pub fn safetensors_name(self) -> &'static str {
        match self {
            Self::F64 => "F64",
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::I64 => "I64",
            Self::I32 => "I32",
            Self::I16 => "I16",
            Self::I8 => "I8",
            Self::U8 => "U8",
            Self::Bool => "BOOL",
            Self::F8E4M3 => "F8_E4M3",
            Self::F8E5M2 => "F8_E5M2",
        }
    }

    fn from_storage_class(name: &str) -> Option<Self> {
        Some(match name {
            "DoubleStorage" => Self::F64,
            "FloatStorage" => Self::F32,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" | "UntypedStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    fn from_torch_dtype(name: &str) -> Option<Self> {
        Some(match name {
            "float64" | "double" => Self::F64,
            "float32" | "float" => Self::F32,
            "float16" | "half" => Self::F16,
            "bfloat16" => Self::BF16,
            "int64" | "long" => Self::I64,
            "int32" | "int" => Self::I32,
            "int16" | "short" => Self::I16,
            "int8" => Self::I8,
            "uint8" => Self::U8,
            "bool" => Self::Bool,
            "float8_e4m3fn" => Self::F8E4M3,
            "float8_e5m2" => Self::F8E5M2,
            _ => return None,
        })
    }
}

/// A tensor as the pickle describes it: a view into a storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: StorageDtype,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Strides, in elements.
    pub stride: Vec<usize>,
    /// Offset of the first element in the storage, in elements.
    pub storage_offset: usize,
    /// The storage's key (`data/<key>` in a zip archive).
    pub storage_key: String,
    /// The storage's size in bytes, as the pickle declares it.
    pub storage_nbytes: usize,
}

impl TensorInfo {
    /// Number of elements (`None` on overflow).
    pub fn numel(&self) -> Option<usize> {
        self.shape
            .iter()
            .try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }
}

/// The unpickled object tree.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer (Python ints beyond 128 bits are refused).
    Int(i128),
    /// A float.
    Float(f64),
    /// A `str` (and protocol-0/1 byte strings, decoded lossily).
    Str(String),
    /// `bytes`.
    Bytes(Vec<u8>),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list (also sets).
    List(Vec<Value>),
    /// A dict or `OrderedDict`, in insertion order, with later duplicates replacing earlier ones.
    Dict(Vec<(Value, Value)>),
    /// A tensor or parameter.
    Tensor(TensorInfo),
    /// A storage object not wrapped in a tensor.
    Storage {
        /// Its key.
        key: String,
    },
    /// An allowed global that was never called (e.g. a bare `torch.float16`).
    Global(String),
}

impl Value {
    /// The value under string key `key`, if this is a dict holding it.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Dict(items) => items.iter().find_map(|(k, v)| match k {
                Value::Str(s) if s == key => Some(v),
                _ => None,
            }),
            _ => None,
        }
    }

    /// The integer, if this is one that fits `i64`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => i64::try_from(*i).ok(),
            _ => None,
        }
    }

    /// The integer, if this is one.
    pub fn as_big_int(&self) -> Option<i128> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// A short name of the kind of value, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a str",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Tensor(_) => "a tensor",
            Value::Storage { .. } => "a storage",
            Value::Global(_) => "a global",
        }
    }
}

/// The allow-list. Each entry is interpreted by [`Machine::reduce`]; nothing is imported.
#[derive(Debug, Clone, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    RebuildParameterWithState,
    CodecsEncode,
    StorageClass(StorageDtype),
    Dtype(StorageDtype),
}

fn resolve_global(module: &str, name: &str) -> Option<Global> {
    Some(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor_v3") => Global::RebuildTensorV3,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch._utils", "_rebuild_parameter_with_state") => Global::RebuildParameterWithState,
        ("_codecs", "encode") => Global::CodecsEncode,
        ("torch", n) => {
            if let Some(d) = StorageDtype::from_storage_class(n) {
                Global::StorageClass(d)
            } else {
                Global::Dtype(StorageDtype::from_torch_dtype(n)?)
            }
        }
        _ => return None,
    })
}

type Id = usize;

/// What [`Machine::to_value`] may still produce: values, and bytes of strings.
struct ExpansionBudget {
    values: usize,
    bytes: usize,
}

#[derive(Debug, Clone)]
enum Obj {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global(Global, String),
    Storage {
        dtype: StorageDtype,
        key: String,
        nbytes: usize,
    },
    Tensor(TensorInfo),
}

#[derive(Debug, Clone, Copy)]
enum Slot {
    Mark,
    Obj(Id),
}

/// One run of the unpickler over one pickle stream.
pub(crate) struct Machine {
    path: PathBuf,
    arena: Vec<Obj>,
    stack: Vec<Slot>,
    memo: HashMap<u32, Id>,
    pos: u64,
    /// Storage key → (dtype, element count) as declared by persistent ids.
    storages: BTreeMap<String, (StorageDtype, u64)>,
}

impl Machine {
    pub(crate) fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            arena: Vec::new(),
            stack: Vec::new(),
            memo: HashMap::new(),
            pos: 0,
            storages: BTreeMap::new(),
        }
    }

    /// Storage key → (dtype, element count) of every storage the pickle referenced.
    pub(crate) fn storage_sizes(&self) -> &BTreeMap<String, (StorageDtype, u64)> {
        &self.storages
    }

    fn err(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Malformed {
            path: self.path.clone(),
            offset: self.pos,
            reason: reason.into(),
        }
    }

    fn read_bytes<R: Read>(&mut self, r: &mut R, n: u64) -> Result<Vec<u8>, PickleError> {
        let mut buf = Vec::new();
        // `take` + `read_to_end` never allocates more than the stream really holds, so a
        // hostile length field cannot make us allocate gigabytes up front.
        r.take(n)
            .read_to_end(&mut buf)
            .map_err(|source| PickleError::Io {
                path: self.path.clone(),
                source,
            })?;
        if buf.len() as u64 != n {
            return Err(self.err(format!("truncated: wanted {n} bytes, got {}", buf.len())));
        }
        self.pos += n;
        Ok(buf)
    }

    fn read_array<R: Read, const N: usize>(&mut self, r: &mut R) -> Result<[u8; N], PickleError> {
        let v = self.read_bytes(r, N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(&v);
        Ok(a)
    }

    fn read_line<R: Read>(&mut self, r: &mut R) -> Result<String, PickleError> {
        let mut out = Vec::new();
        loop {
            let [b] = self.read_array::<R, 1>(r)?;
            if b == b'\n' {
                break;
            }
            if out.len() > 4096 {
                return Err(self.err("GLOBAL line longer than 4096 bytes"));
            }
            out.push(b);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    fn alloc(&mut self, obj: Obj) -> Result<Id, PickleError> {
        if self.arena.len() >= MAX_OBJECTS {
            return Err(self.err("too many objects"));
        }
        self.arena.push(obj);
        Ok(self.arena.len() - 1)
    }

    fn push(&mut self, obj: Obj) -> Result<(), PickleError> {
        let id = self.alloc(obj)?;
        self.stack.push(Slot::Obj(id));
        Ok(())
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        match self.stack.pop() {
            Some(Slot::Obj(id)) => Ok(id),
            Some(Slot::Mark) => Err(self.err("unexpected MARK on the stack")),
            None => Err(self.err("stack underflow")),
        }
    }

    fn top(&self) -> Result<Id, PickleError> {
        match self.stack.last() {
            Some(Slot::Obj(id)) => Ok(*id),
            _ => Err(self.err("expected an object on the stack")),
        }
    }

    /// Pops everything down to (and including) the topmost MARK.
    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let mark = self
            .stack
            .iter()
            .rposition(|s| matches!(s, Slot::Mark))
            .ok_or_else(|| self.err("no MARK on the stack"))?;
        let items = self
            .stack
            .drain(mark..)
            .skip(1)
            .filter_map(|s| match s {
                Slot::Obj(id) => Some(id),
                Slot::Mark => None,
            })
            .collect();
        Ok(items)
    }

    fn memo_get(&self, key: u32) -> Result<Id, PickleError> {
        self.memo
            .get(&key)
            .copied()
            .ok_or_else(|| self.err(format!("memo key {key} was never stored")))
    }

    fn obj(&self, id: Id) -> &Obj {
        // Ids only ever come from `alloc`, so they are in range.
        &self.arena[id]
    }

    fn int(&self, id: Id, what: &str) -> Result<i128, PickleError> {
        match self.obj(id) {
            Obj::Int(i) => Ok(*i),
            Obj::Bool(b) => Ok(i128::from(*b)),
            _ => Err(self.err(format!("{what} must be an int"))),
        }
    }

    fn usize(&self, id: Id, what: &str) -> Result<usize, PickleError> {
        let i = self.int(id, what)?;
        usize::try_from(i).map_err(|_| self.err(format!("{what} {i} is out of range")))
    }

    fn str(&self, id: Id, what: &str) -> Result<String, PickleError> {
        match self.obj(id) {
            Obj::Str(s) => Ok(s.clone()),
            _ => Err(self.err(format!("{what} must be a str"))),
        }
    }

    fn tuple_items(&self, id: Id, what: &str) -> Result<Vec<Id>, PickleError> {
        match self.obj(id) {
            Obj::Tuple(items) | Obj::List(items) => Ok(items.clone()),
            _ => Err(self.err(format!("{what} must be a tuple"))),
        }
    }

    fn usize_list(&self, id: Id, what: &str) -> Result<Vec<usize>, PickleError> {
        self.tuple_items(id, what)?
            .into_iter()
            .map(|i| self.usize(i, what))
            .collect()
    }

    fn set_items(&mut self, dict: Id, items: &[Id]) -> Result<(), PickleError> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let pairs: Vec<(Id, Id)> = items.chunks_exact(2).map(|c| (c[0], c[1])).collect();
        match &mut self.arena[dict] {
            Obj::Dict(d) => {
                d.extend(pairs);
                Ok(())
            }
            _ => Err(self.err("SETITEM(S) on something that is not a dict")),
        }
    }

    fn append_items(&mut self, list: Id, items: &[Id]) -> Result<(), PickleError> {
        match &mut self.arena[list] {
            Obj::List(l) => {
                l.extend_from_slice(items);
                Ok(())
            }
            _ => Err(self.err("APPEND(S) on something that is not a list")),
        }
    }

    fn global(&mut self, module: String, name: String) -> Result<(), PickleError> {
        match resolve_global(&module, &name) {
            Some(g) => self.push(Obj::Global(g, format!("{module}.{name}"))),
            None => Err(PickleError::ForbiddenGlobal {
                path: self.path.clone(),
                module,
                name,
            }),
        }
    }

    fn tensor_from(
        &self,
        storage: Id,
        offset: Id,
        size: Id,
        stride: Id,
        dtype_override: Option<StorageDtype>,
    ) -> Result<Obj, PickleError> {
        let Obj::Storage { dtype, key, nbytes } = self.obj(storage) else {
            return Err(self.err("tensor rebuild without a storage (persistent id)"));
        };
        let shape = self.usize_list(size, "tensor size")?;
        let stride = self.usize_list(stride, "tensor stride")?;
        if shape.len() != stride.len() {
            return Err(self.err(format!(
                "tensor has {} dims but {} strides",
                shape.len(),
                stride.len()
            )));
        }
        Ok(Obj::Tensor(TensorInfo {
            dtype: dtype_override.unwrap_or(*dtype),
            shape,
            stride,
            storage_offset: self.usize(offset, "storage offset")?,
            storage_key: key.clone(),
            storage_nbytes: *nbytes,
        }))
    }

    /// Interprets `callable(*args)` for the allowed globals.
    fn reduce(&mut self, callable: Id, args: Id) -> Result<Obj, PickleError> {
        let Obj::Global(global, name) = self.obj(callable).clone() else {
            return Err(self.err("REDUCE on something that is not an allowed global"));
        };
        let args = self.tuple_items(args, "REDUCE arguments")?;
        let arity = |n: std::ops::RangeInclusive<usize>| {
            if n.contains(&args.len()) {
                Ok(())
            } else {
                Err(self.err(format!("{name} called with {} arguments", args.len())))
            }
        };
        match global {
            Global::OrderedDict => {
                arity(0..=0)?;
                Ok(Obj::Dict(Vec::new()))
            }
            Global::RebuildTensor => {
                arity(4..=4)?;
                self.tensor_from(args[0], args[1], args[2], args[3], None)
            }
            Global::RebuildTensorV2 => {
                arity(6..=7)?;
                self.tensor_from(args[0], args[1], args[2], args[3], None)
            }
            Global::RebuildTensorV3 => {
                arity(7..=8)?;
                let Obj::Global(Global::Dtype(dtype), _) = self.obj(args[6]) else {
                    return Err(self.err("_rebuild_tensor_v3 without a torch dtype"));
                };
                let dtype = *dtype;
                self.tensor_from(args[0], args[1], args[2], args[3], Some(dtype))
            }
            Global::RebuildParameter => {
                arity(3..=3)?;
                self.as_tensor(args[0])
            }
            Global::RebuildParameterWithState => {
                arity(4..=4)?;
                self.as_tensor(args[0])
            }
            Global::CodecsEncode => {
                // Protocol 2 pickles bytes as `_codecs.encode(str, "latin1")`.
                arity(1..=2)?;
                let s = self.str(args[0], "_codecs.encode argument")?;
                Ok(Obj::Bytes(s.chars().map(|c| c as u32 as u8).collect()))
            }
            Global::StorageClass(_) | Global::Dtype(_) => {
                Err(self.err(format!("{name} cannot be called")))
            }
        }
    }

    fn as_tensor(&self, id: Id) -> Result<Obj, PickleError> {
        match self.obj(id) {
            t @ Obj::Tensor(_) => Ok(t.clone()),
            _ => Err(self.err("parameter rebuild without a tensor")),
        }
    }

    fn persistent_load(&mut self, pid: Id) -> Result<Obj, PickleError> {
        let items = self.tuple_items(pid, "persistent id")?;
        let [tag, class, key, _location, numel, ..] = items.as_slice() else {
            return Err(self.err("persistent id must be ('storage', type, key, location, numel)"));
        };
        if self.str(*tag, "persistent id tag")? != "storage" {
            return Err(self.err("persistent id tag must be 'storage'"));
        }
        let Obj::Global(Global::StorageClass(dtype), _) = self.obj(*class) else {
            let name = match self.obj(*class) {
                Obj::Global(_, n) => n.clone(),
                _ => "<not a class>".into(),
            };
            return Err(PickleError::UnsupportedStorage {
                path: self.path.clone(),
                storage: name.trim_start_matches("torch.").to_string(),
            });
        };
        let dtype = *dtype;
        let key = match self.obj(*key) {
            Obj::Str(s) => s.clone(),
            Obj::Int(i) => i.to_string(),
            _ => return Err(self.err("storage key must be a str")),
        };
        let numel = self.usize(*numel, "storage size")?;
        let nbytes = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| self.err("storage size overflows"))?;
        self.storages.insert(key.clone(), (dtype, numel as u64));
        Ok(Obj::Storage { dtype, key, nbytes })
    }

    /// Runs the pickle in `r` up to its STOP opcode and returns the result.
    pub(crate) fn run<R: Read>(&mut self, r: &mut R) -> Result<Value, PickleError> {
        loop {
            let at = self.pos;
            let [op] = self.read_array::<R, 1>(r)?;
            match op {
                0x80 => {
                    let [_proto] = self.read_array::<R, 1>(r)?;
                }
                0x95 => {
                    // FRAME: a length prefix used only for buffering.
                    self.read_array::<R, 8>(r)?;
                }
                b'.' => {
                    let id = self.pop()?;
                    let mut budget = self.expansion_budget();
                    return self.to_value(id, 0, &mut budget);
                }
                b'}' => self.push(Obj::Dict(Vec::new()))?,
                b']' | 0x8f => self.push(Obj::List(Vec::new()))?,
                b')' => self.push(Obj::Tuple(Vec::new()))?,
                b'(' => self.stack.push(Slot::Mark),
                b'0' => {
                    self.stack
                        .pop()
                        .ok_or_else(|| self.err("POP on an empty stack"))?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let id = self.top()?;
                    self.stack.push(Slot::Obj(id));
                }
                b'q' => {
                    let [k] = self.read_array::<R, 1>(r)?;
                    let id = self.top()?;
                    self.memo.insert(u32::from(k), id);
                }
                b'r' => {
                    let k = u32::from_le_bytes(self.read_array::<R, 4>(r)?);
                    let id = self.top()?;
                    self.memo.insert(k, id);
                }
                0x94 => {
                    let id = self.top()?;
                    let k =
                        u32::try_from(self.memo.len()).map_err(|_| self.err("memo overflow"))?;
                    self.memo.insert(k, id);
                }
                b'h' => {
                    let [k] = self.read_array::<R, 1>(r)?;
                    let id = self.memo_get(u32::from(k))?;
                    self.stack.push(Slot::Obj(id));
                }
                b'j' => {
                    let k = u32::from_le_bytes(self.read_array::<R, 4>(r)?);
                    let id = self.memo_get(k)?;
                    self.stack.push(Slot::Obj(id));
                }
                b'c' => {
                    let module = self.read_line(r)?;
                    let name = self.read_line(r)?;
                    self.global(module, name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (module, name) = (self.str(module, "module")?, self.str(name, "name")?);
                    self.global(module, name)?;
                }
                b'X' | 0x8c | 0x8d | b'T' | b'U' => {
                    let n = match op {
                        b'X' | b'T' => u64::from(u32::from_le_bytes(self.read_array::<R, 4>(r)?)),
                        0x8d => u64::from_le_bytes(self.read_array::<R, 8>(r)?),
                        _ => u64::from(self.read_array::<R, 1>(r)?[0]),
                    };
                    let bytes = self.read_bytes(r, n)?;
                    let s = match op {
                        // Python-2 byte strings (BINSTRING) decode as latin-1, as
                        // `torch.load(encoding="latin1")` would.
                        b'T' | b'U' => bytes.iter().map(|&b| char::from(b)).collect(),
                        _ => String::from_utf8(bytes)
                            .map_err(|_| self.err("invalid UTF-8 in str"))?,
                    };
                    self.push(Obj::Str(s))?;
                }
                b'B' | b'C' | 0x8e => {
                    let n = match op {
                        b'B' => u64::from(u32::from_le_bytes(self.read_array::<R, 4>(r)?)),
                        0x8e => u64::from_le_bytes(self.read_array::<R, 8>(r)?),
                        _ => u64::from(self.read_array::<R, 1>(r)?[0]),
                    };
                    let bytes = self.read_bytes(r, n)?;
                    self.push(Obj::Bytes(bytes))?;
                }
                b'J' => {
                    let v = i32::from_le_bytes(self.read_array::<R, 4>(r)?);
                    self.push(Obj::Int(i128::from(v)))?;
                }
                b'K' => {
                    let [v] = self.read_array::<R, 1>(r)?;
                    self.push(Obj::Int(i128::from(v)))?;
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.read_array::<R, 2>(r)?);
                    self.push(Obj::Int(i128::from(v)))?;
                }
                0x8a | 0x8b => {
                    let n = if op == 0x8a {
                        u64::from(self.read_array::<R, 1>(r)?[0])
                    } else {
                        u64::from(u32::from_le_bytes(self.read_array::<R, 4>(r)?))
                    };
                    if n > 16 {
                        return Err(self.err(format!("integer of {n} bytes is too large")));
                    }
                    let bytes = self.read_bytes(r, n)?;
                    // Little-endian two's complement, sign-extended to 128 bits.
                    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
                    let mut full = [if negative { 0xFF } else { 0 }; 16];
                    full[..bytes.len()].copy_from_slice(&bytes);
                    self.push(Obj::Int(i128::from_le_bytes(full)))?;
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.read_array::<R, 8>(r)?);
                    self.push(Obj::Float(v))?;
                }
                b'N' => self.push(Obj::None)?,
                0x88 => self.push(Obj::Bool(true))?,
                0x89 => self.push(Obj::Bool(false))?,
                b't' | 0x91 => {
                    let items = self.pop_mark()?;
                    self.push(if op == b't' {
                        Obj::Tuple(items)
                    } else {
                        Obj::List(items)
                    })?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.push(Obj::Tuple(items))?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let d = self.top()?;
                    self.set_items(d, &[k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let d = self.top()?;
                    self.set_items(d, &items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    let l = self.top()?;
                    self.append_items(l, &[v])?;
                }
                b'e' | 0x90 => {
                    let items = self.pop_mark()?;
                    let l = self.top()?;
                    self.append_items(l, &items)?;
                }
                b'R' | 0x81 => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let obj = self.reduce(callable, args)?;
                    self.push(obj)?;
                }
                b'b' => {
                    // BUILD sets instance state: `_metadata` on a state dict's OrderedDict, or
                    // a parameter's extra attributes. Neither matters for weights, so the state
                    // is dropped, but only on the types torch's weights-only loader allows.
                    let _state = self.pop()?;
                    let target = self.top()?;
                    if !matches!(self.obj(target), Obj::Dict(_) | Obj::Tensor(_)) {
                        return Err(self.err("BUILD on something other than a dict or a tensor"));
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let obj = self.persistent_load(pid)?;
                    self.push(obj)?;
                }
                other => {
                    return Err(PickleError::UnsupportedOpcode {
                        path: self.path.clone(),
                        opcode: other,
                        offset: at,
                    });
                }
            }
        }
    }

    /// What turning the arena into a tree may produce. A memoised object referenced twice is
    /// copied twice, so a 1 KB pickle whose lists hold their own memo entry ten times, thirty
    /// levels deep ("billion laughs"), would expand to 10^30 values: the tree may hold at most
    /// twice the arena's objects and string bytes, plus a margin (real state dicts share only
    /// small objects, such as the `'cpu'` location string of every storage).
    fn expansion_budget(&self) -> ExpansionBudget {
        let bytes: usize = self
            .arena
            .iter()
            .map(|o| match o {
                Obj::Str(s) => s.len(),
                Obj::Bytes(b) => b.len(),
                _ => 0,
            })
            .sum();
        ExpansionBudget {
            values: self.arena.len().saturating_mul(2).saturating_add(1 << 20),
            bytes: bytes.saturating_mul(2).saturating_add(64 << 20),
        }
    }

    fn to_values(
        &self,
        items: &[Id],
        depth: usize,
        budget: &mut ExpansionBudget,
    ) -> Result<Vec<Value>, PickleError> {
        items
            .iter()
            .map(|&i| self.to_value(i, depth, budget))
            .collect()
    }

    fn to_value(
        &self,
        id: Id,
        depth: usize,
        budget: &mut ExpansionBudget,
    ) -> Result<Value, PickleError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!("nesting deeper than {MAX_DEPTH} (or a cycle)")));
        }
        let payload = match self.obj(id) {
            Obj::Str(s) => s.len(),
            Obj::Bytes(b) => b.len(),
            _ => 0,
        };
        if budget.values == 0 || budget.bytes < payload {
            return Err(self.err(
                "the object tree expands to far more than the pickle holds (memoised objects \
                 referenced over and over, as in a \"billion laughs\" attack); refusing",
            ));
        }
        budget.values -= 1;
        budget.bytes -= payload;
        Ok(match self.obj(id) {
            Obj::None => Value::None,
            Obj::Bool(b) => Value::Bool(*b),
            Obj::Int(i) => Value::Int(*i),
            Obj::Float(f) => Value::Float(*f),
            Obj::Str(s) => Value::Str(s.clone()),
            Obj::Bytes(b) => Value::Bytes(b.clone()),
            Obj::Tuple(items) => Value::Tuple(self.to_values(items, depth + 1, budget)?),
            Obj::List(items) => Value::List(self.to_values(items, depth + 1, budget)?),
            Obj::Dict(pairs) => {
                // Python dict semantics: a repeated key keeps its first position and last value.
                let mut out: Vec<(Value, Value)> = Vec::with_capacity(pairs.len());
                let mut seen: HashMap<String, usize> = HashMap::new();
                for &(k, v) in pairs {
                    let key = self.to_value(k, depth + 1, budget)?;
                    let value = self.to_value(v, depth + 1, budget)?;
                    let hash_key = match &key {
                        Value::Str(s) => Some(format!("s{s}")),
                        Value::Int(i) => Some(format!("i{i}")),
                        _ => None,
                    };
                    match hash_key.as_ref().and_then(|h| seen.get(h)) {
                        Some(&pos) => out[pos].1 = value,
                        None => {
                            if let Some(h) = hash_key {
                                seen.insert(h, out.len());
                            }
                            out.push((key, value));
                        }
                    }
                }
                Value::Dict(out)
            }
            Obj::Global(_, name) => Value::Global(name.clone()),
            Obj::Storage { key, .. } => Value::Storage { key: key.clone() },
            Obj::Tensor(t) => Value::Tensor(t.clone()),
        })
    }
}

/// Gathers a strided view of `storage` into contiguous little-endian bytes.
pub(crate) fn materialize(
    path: &Path,
    name: &str,
    info: &TensorInfo,
    storage: &[u8],
    big_endian: bool,
) -> Result<Vec<u8>, PickleError> {
    let elsize = info.dtype.size();
    let available = storage.len() / elsize;
    let out_of_bounds = |needed: u64| PickleError::TensorOutOfBounds {
        path: path.to_path_buf(),
        tensor: name.to_string(),
        layout: format!(
            "shape {}, stride {}, offset {}",
            crate::short_shape(&info.shape),
            crate::short_shape(&info.stride),
            info.storage_offset
        ),
        key: info.storage_key.clone(),
        needed,
        available: available as u64,
    };
    let numel = info.numel().ok_or_else(|| out_of_bounds(u64::MAX))?;
    if numel == 0 {
        return Ok(Vec::new());
    }
    // The furthest element the view touches must lie inside the storage.
    let mut last = info.storage_offset;
    for (&d, &s) in info.shape.iter().zip(&info.stride) {
        last = (d - 1)
            .checked_mul(s)
            .and_then(|x| x.checked_add(last))
            .ok_or_else(|| out_of_bounds(u64::MAX))?;
    }
    if last >= available {
        return Err(out_of_bounds(last as u64 + 1));
    }
    let nbytes = numel
        .checked_mul(elsize)
        .ok_or_else(|| out_of_bounds(u64::MAX))?;
    let mut out = Vec::with_capacity(nbytes);
    let contiguous = {
        let mut expect = 1usize;
        let mut ok = true;
        for (&d, &s) in info.shape.iter().zip(&info.stride).rev() {
            if d != 1 && s != expect {
                ok = false;
                break;
            }
            expect *= d;
        }
        ok
    };
    if contiguous {
        let start = info.storage_offset * elsize;
        out.extend_from_slice(&storage[start..start + nbytes]);
    } else {
        // Odometer over the index space, in row-major order.
        let rank = info.shape.len();
        let mut index = vec![0usize; rank];
        let mut at = info.storage_offset;
        for _ in 0..numel {
            out.extend_from_slice(&storage[at * elsize..(at + 1) * elsize]);
            for dim in (0..rank).rev() {
                index[dim] += 1;
                at += info.stride[dim];
                if index[dim] < info.shape[dim] {
                    break;
                }
                at -= info.stride[dim] * info.shape[dim];
                index[dim] = 0;
            }
        }
    }
    if big_endian && elsize > 1 {
        for chunk in out.chunks_exact_mut(elsize) {
            chunk.reverse();
        }
    }
    Ok(out)
}
