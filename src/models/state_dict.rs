//! Reads `torch.save` files of a state dict (names -> tensors) without
//! Python, so published PyTorch weights (pytorch-fid's FID Inception) load
//! by name into our networks. Both formats torch writes:
//! - the zip format (torch >= 1.6): `<dir>/data.pkl`, the pickled dict
//!   whose tensors name their storages by key, and `<dir>/data/<key>`, each
//!   storage's raw little-endian bytes;
//! - the legacy format (torch < 1.6, e.g. pytorch-fid's 2019 weights): five
//!   pickles in a row (magic number, protocol version 1001, system info,
//!   the dict, the list of storage keys), then each storage in that list's
//!   order as an 8-byte little-endian element count and its raw data.
//!
//! The pickle machine runs the opcodes torch.save emits (protocol 2, and
//! the protocol-4 framing a `pickle_protocol=4` save adds). It never calls
//! what a file names: it knows `collections.OrderedDict` and torch's tensor
//! rebuild functions and keeps everything else as an inert name, so a
//! hostile file can only fail to load. Storages load on the CPU whatever
//! device they were saved from; tensors keep their stored dtype, sizes,
//! strides and offsets (views of one storage stay views of one tensor).
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use tch::{Kind, Tensor};

use crate::error::{Error, Result};

/// Reads the tensors of a `torch.save` file holding a dict (a state dict),
/// in the dict's order. Entries that are not tensors are skipped.
pub fn read(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut head = [0u8; 4];
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let got = read_up_to(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
    let found = if got == 4 && head == *b"PK\x03\x04" {
        read_zip(file)
    } else if got >= 1 && head[0] == PROTO {
        drop(file);
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        read_legacy(&bytes)
    } else {
        Err(format!(
            "not a torch.save file (it starts with {}, neither a zip archive nor a pickle)",
            hex(&head[..got])
        ))
    };
    found.map_err(|msg| Error::file(path, msg))
}

/// Fills `buf` as far as the file goes.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn hex(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "nothing (the file is empty)".to_string();
    }
    let h: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("bytes {}", h.join(" "))
}

/// The zip format: `<dir>/data.pkl` and `<dir>/data/<key>` per storage.
fn read_zip(file: std::fs::File) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let mut zip = zip::ZipArchive::new(file)
        .map_err(|e| format!("not a torch.save file (an unreadable zip archive: {e})"))?;
    let pkl = zip
        .file_names()
        .find(|n| {
            n.strip_suffix("data.pkl").is_some_and(|dir| {
                dir.is_empty() || (dir.ends_with('/') && dir.matches('/').count() == 1)
            })
        })
        .map(str::to_string)
        .ok_or("not a torch.save file (a zip archive without data.pkl)")?;
    let dir = &pkl[..pkl.len() - "data.pkl".len()];
    let entry = |zip: &mut zip::ZipArchive<std::fs::File>, name: &str| {
        let mut f = zip
            .by_name(name)
            .map_err(|e| format!("zip entry {name}: {e} (the file is damaged)"))?;
        let mut bytes = Vec::with_capacity(f.size() as usize);
        f.read_to_end(&mut bytes)
            .map_err(|e| format!("zip entry {name}: {e} (the file is damaged)"))?;
        Ok::<_, String>(bytes)
    };
    if zip.file_names().any(|n| n == format!("{dir}byteorder")) {
        let order = entry(&mut zip, &format!("{dir}byteorder"))?;
        if order.trim_ascii() != b"little" {
            return Err(format!(
                "saved on a {} machine; only little-endian files are supported",
                String::from_utf8_lossy(order.trim_ascii())
            ));
        }
    }
    let pickle = entry(&mut zip, &pkl)?;
    let mut m = Machine::new(&pickle);
    let root = m.run()?;
    let mut storages = HashMap::new();
    for (key, &(kind, numel)) in &m.storages {
        let bytes = entry(&mut zip, &format!("{dir}data/{key}"))?;
        storages.insert(key.clone(), storage_tensor(key, &bytes, kind, numel)?);
    }
    collect(&root, &storages)
}

/// The legacy magic number 0x1950a86a20f9469cfc6c as LONG1's little-endian bytes.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// The only legacy protocol version torch ever wrote.
const LEGACY_PROTOCOL: i64 = 1001;

/// The legacy format: five pickles, then the storages in the last one's order.
fn read_legacy(bytes: &[u8]) -> std::result::Result<Vec<(String, Tensor)>, String> {
    // torch < 0.4 wrote a tar archive ("ustar" at byte 257).
    if bytes.get(257..262) == Some(b"ustar") {
        return Err(
            "a torch.save file in the tar format of torch < 0.4, which is not \
                    supported; load and re-save it with a newer torch"
                .to_string(),
        );
    }
    let mut pos = 0;
    let mut next = |what: &str| {
        let mut m = Machine::at(bytes, pos);
        let v = m.run().map_err(|e| format!("{what}: {e}"))?;
        pos = m.pos;
        Ok::<_, String>((v, m.storages))
    };
    let magic = next("magic number").map_err(|e| format!("not a torch.save file ({e})"))?;
    match magic.0 {
        Value::BigInt(b) if b == LEGACY_MAGIC => {}
        _ => return Err("not a torch.save file (a pickle without torch's magic number)".into()),
    }
    match next("protocol version")?.0 {
        Value::Int(LEGACY_PROTOCOL) => {}
        v => {
            return Err(format!(
                "legacy torch.save protocol {v:?}; only 1001 exists"
            ))
        }
    }
    if let Value::Dict(info) = next("system info")?.0 {
        let little = info
            .borrow()
            .iter()
            .find(|(k, _)| matches!(k, Value::Str(s) if s == "little_endian"))
            .map(|(_, v)| v.clone());
        if let Some(Value::Bool(false)) = little {
            return Err(
                "saved on a big-endian machine; only little-endian files are supported".into(),
            );
        }
    }
    let (root, found) = next("the state dict")?;
    let keys = match next("storage keys")?.0 {
        Value::List(l) => l
            .borrow()
            .iter()
            .map(key_string)
            .collect::<std::result::Result<Vec<_>, _>>()?,
        v => {
            return Err(format!(
                "storage keys are a {}, not a list (corrupt file)",
                v.describe()
            ))
        }
    };
    let mut storages = HashMap::new();
    for key in keys {
        let &(kind, numel) = found.get(&key).ok_or_else(|| {
            format!("storage {key} is listed but no tensor uses it (corrupt file)")
        })?;
        let count = bytes
            .get(pos..pos + 8)
            .ok_or_else(|| format!("storage {key} is cut off (the file is truncated)"))?;
        let count = i64::from_le_bytes(count.try_into().expect("8 bytes"));
        if count != numel {
            return Err(format!(
                "storage {key} holds {count} elements where its tensors say {numel} (corrupt file)"
            ));
        }
        let len = storage_bytes(&key, numel, kind)?;
        let data = bytes
            .get(pos + 8..)
            .and_then(|rest| rest.get(..len))
            .ok_or_else(|| format!("storage {key} is cut off (the file is truncated)"))?;
        storages.insert(key.clone(), storage_tensor(&key, data, kind, numel)?);
        pos += 8 + len;
    }
    collect(&root, &storages)
}

/// A storage's size in bytes, checked.
fn storage_bytes(key: &str, numel: i64, kind: Kind) -> std::result::Result<usize, String> {
    usize::try_from(numel)
        .ok()
        .and_then(|n| n.checked_mul(kind.elt_size_in_bytes()))
        .ok_or_else(|| format!("storage {key}: impossible size {numel} (corrupt file)"))
}

/// A storage's bytes as a 1-d CPU tensor of its dtype.
fn storage_tensor(
    key: &str,
    bytes: &[u8],
    kind: Kind,
    numel: i64,
) -> std::result::Result<Tensor, String> {
    let len = storage_bytes(key, numel, kind)?;
    if bytes.len() != len {
        return Err(format!(
            "storage {key} has {} bytes where its tensors need {len} (the file is damaged)",
            bytes.len()
        ));
    }
    Tensor::f_from_data_size(bytes, &[numel], kind).map_err(|e| format!("storage {key}: {e}"))
}

/// The dict's tensors, in order.
fn collect(
    root: &Value,
    storages: &HashMap<String, Tensor>,
) -> std::result::Result<Vec<(String, Tensor)>, String> {
    let Value::Dict(dict) = root else {
        return Err(format!(
            "holds a {} rather than a state dict (a dict of tensors); save `model.state_dict()`",
            root.describe()
        ));
    };
    let mut out = Vec::new();
    for (k, v) in dict.borrow().iter() {
        let name = match k {
            Value::Str(s) => s.clone(),
            other => {
                return Err(format!(
                    "a key of the dict is a {}, not a name",
                    other.describe()
                ))
            }
        };
        match v {
            Value::Tensor(t) => out.push((name.clone(), materialize(&name, t, storages)?)),
            Value::Object(what) if what.starts_with("torch._utils._rebuild") => {
                return Err(format!(
                    "{name}: tensors rebuilt by {what} (quantized, sparse, ...) are not supported"
                ))
            }
            _ => {}
        }
    }
    if out.is_empty() {
        return Err("holds a dict without tensors, not a state dict".to_string());
    }
    Ok(out)
}

/// A tensor as `_rebuild_tensor_v2` makes it: a strided view of its storage.
fn materialize(
    name: &str,
    t: &TensorRef,
    storages: &HashMap<String, Tensor>,
) -> std::result::Result<Tensor, String> {
    let s = &t.storage;
    let root = storages
        .get(&s.key)
        .ok_or_else(|| format!("{name}: storage {} is missing from the file", s.key))?;
    let (base, len) = s.view.unwrap_or((0, s.numel));
    let bad = || {
        format!(
            "{name}: sizes {:?}, strides {:?} and offset {} do not fit its storage (corrupt file)",
            t.size, t.stride, t.offset
        )
    };
    if t.size.len() != t.stride.len()
        || t.size.iter().chain(&t.stride).any(|&v| v < 0)
        || t.offset < 0
        || base < 0
        || len < 0
        || base.checked_add(len).is_none_or(|end| end > s.numel)
    {
        return Err(bad());
    }
    // The last element the view reaches must lie inside the storage (or its view).
    if !t.size.contains(&0) {
        let mut last = t.offset;
        for (&n, &st) in t.size.iter().zip(&t.stride) {
            last = (n - 1)
                .checked_mul(st)
                .and_then(|d| last.checked_add(d))
                .ok_or_else(bad)?;
        }
        if last >= len {
            return Err(bad());
        }
    }
    root.f_as_strided(t.size.as_slice(), t.stride.as_slice(), base + t.offset)
        .map_err(|e| format!("{name}: {e}"))
}

/// A storage a tensor points at: `key` in the file, its element count, and
/// (legacy files) the `(offset, size)` of the view of it used. Its dtype is
/// recorded per key in [`Machine::storages`].
#[derive(Debug, Clone)]
struct StorageRef {
    key: String,
    numel: i64,
    view: Option<(i64, i64)>,
}

/// A tensor before its storage is read: where it lies in the storage.
#[derive(Debug)]
struct TensorRef {
    storage: StorageRef,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

/// A pickled value. Lists and dicts are shared (`Rc`) as in Python, so a
/// container fetched from the memo is the one later opcodes fill.
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// An integer wider than 64 bits, as its little-endian bytes (the legacy magic number).
    BigInt(Vec<u8>),
    /// A float (its value is never needed to rebuild tensors).
    Float,
    Str(String),
    Tuple(Rc<Vec<Value>>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    /// `module.name` named by GLOBAL: never imported, only recognised.
    Global(Rc<str>),
    /// What calling (or instantiating) something unknown would give: its name.
    Object(Rc<str>),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

impl Value {
    /// What the value is, for error messages.
    fn describe(&self) -> String {
        match self {
            Value::None => "None".into(),
            Value::Bool(_) => "bool".into(),
            Value::Int(_) | Value::BigInt(_) => "int".into(),
            Value::Float => "float".into(),
            Value::Str(_) => "string".into(),
            Value::Tuple(_) => "tuple".into(),
            Value::List(_) => "list".into(),
            Value::Dict(_) => "dict".into(),
            Value::Global(g) => format!("reference to {g}"),
            Value::Object(o) => format!("pickled {o} object"),
            Value::Storage(_) => "storage".into(),
            Value::Tensor(_) => "tensor".into(),
        }
    }

    fn int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(*b as i64),
            _ => None,
        }
    }

    fn ints(&self) -> Option<Vec<i64>> {
        match self {
            Value::Tuple(t) => t.iter().map(Value::int).collect(),
            Value::List(l) => l.borrow().iter().map(Value::int).collect(),
            _ => None,
        }
    }
}

/// A storage key: a string (legacy files: the decimal of a pointer).
fn key_string(v: &Value) -> std::result::Result<String, String> {
    match v {
        Value::Str(s) => Ok(s.clone()),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(format!(
            "a storage key is a {} (corrupt file)",
            other.describe()
        )),
    }
}

/// The dtype of a storage class (`torch.FloatStorage`, `torch.cuda.HalfStorage`, ...).
fn storage_kind(class: &str) -> Option<Kind> {
    let name = class
        .strip_prefix("torch.cuda.")
        .or_else(|| class.strip_prefix("torch.storage."))
        .or_else(|| class.strip_prefix("torch."))?;
    Some(match name {
        "DoubleStorage" => Kind::Double,
        "FloatStorage" => Kind::Float,
        "HalfStorage" => Kind::Half,
        "BFloat16Storage" => Kind::BFloat16,
        "LongStorage" => Kind::Int64,
        "IntStorage" => Kind::Int,
        "ShortStorage" => Kind::Int16,
        "CharStorage" => Kind::Int8,
        "ByteStorage" => Kind::Uint8,
        "BoolStorage" => Kind::Bool,
        "ComplexFloatStorage" => Kind::ComplexFloat,
        "ComplexDoubleStorage" => Kind::ComplexDouble,
        // torch.save of an untyped storage: bytes.
        "UntypedStorage" => Kind::Uint8,
        _ => return None,
    })
}

// The opcodes, as Python's pickletools names them.
const PROTO: u8 = 0x80;
const FRAME: u8 = 0x95;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const DUP: u8 = b'2';
const GLOBAL: u8 = b'c';
const STACK_GLOBAL: u8 = 0x93;
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const MEMOIZE: u8 = 0x94;
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const EMPTY_DICT: u8 = b'}';
const EMPTY_LIST: u8 = b']';
const EMPTY_TUPLE: u8 = b')';
const DICT: u8 = b'd';
const LIST: u8 = b'l';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const BINUNICODE: u8 = b'X';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINSTRING: u8 = b'T';
const SHORT_BINSTRING: u8 = b'U';
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const BINFLOAT: u8 = b'G';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const REDUCE: u8 = b'R';
const BUILD: u8 = b'b';
const NEWOBJ: u8 = 0x81;
const BINPERSID: u8 = b'Q';
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const APPEND: u8 = b'a';
const APPENDS: u8 = b'e';

type Step<T> = std::result::Result<T, String>;

/// The pickle machine: runs one pickle from `pos` to its STOP and records
/// the storages its persistent ids name (key -> dtype, element count).
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    storages: HashMap<String, (Kind, i64)>,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self::at(data, 0)
    }

    fn at(data: &'a [u8], pos: usize) -> Self {
        Machine {
            data,
            pos,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages: HashMap::new(),
        }
    }

    fn take(&mut self, n: usize) -> Step<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or_else(|| {
                format!(
                    "the pickle ends early at byte {} (the file is truncated)",
                    self.data.len()
                )
            })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Step<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Step<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Step<u64> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn line(&mut self) -> Step<&'a str> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("a GLOBAL without its newline (the file is truncated)")?;
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| "a GLOBAL name is not text (corrupt file)")?;
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Step<Value> {
        let b = self.take(n)?;
        let s = std::str::from_utf8(b)
            .map_err(|_| format!("bad UTF-8 in a string before byte {}", self.pos))?;
        Ok(Value::Str(s.to_string()))
    }

    /// Python 2 strings and bytes: kept as text (Latin-1), as torch decodes them.
    fn latin1(&mut self, n: usize) -> Step<Value> {
        Ok(Value::Str(
            self.take(n)?.iter().map(|&b| b as char).collect(),
        ))
    }

    fn pop(&mut self) -> Step<Value> {
        self.stack
            .pop()
            .ok_or_else(|| format!("pickle stack empty at byte {} (corrupt file)", self.pos))
    }

    fn top(&mut self) -> Step<&mut Value> {
        let pos = self.pos;
        self.stack
            .last_mut()
            .ok_or_else(|| format!("pickle stack empty at byte {pos} (corrupt file)"))
    }

    /// The values pushed since the last MARK.
    fn pop_mark(&mut self) -> Step<Vec<Value>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| format!("no MARK before byte {} (corrupt file)", self.pos))?;
        if mark > self.stack.len() {
            return Err(format!(
                "MARK above the stack at byte {} (corrupt file)",
                self.pos
            ));
        }
        Ok(self.stack.split_off(mark))
    }

    fn memo_get(&self, i: u32) -> Step<Value> {
        self.memo
            .get(&i)
            .cloned()
            .ok_or_else(|| format!("memo entry {i} read before it was written (corrupt file)"))
    }

    fn memo_put(&mut self, i: u32) -> Step<()> {
        let v = self.top()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }

    fn run(&mut self) -> Step<Value> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                PROTO => {
                    self.u8()?;
                }
                FRAME => {
                    self.u64()?;
                }
                STOP => return self.pop(),
                MARK => self.marks.push(self.stack.len()),
                POP => {
                    self.pop()?;
                }
                POP_MARK => {
                    self.pop_mark()?;
                }
                DUP => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                GLOBAL => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.stack.push(Value::Global(format!("{module}.{name}").into()));
                }
                STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.stack.push(Value::Global(format!("{m}.{n}").into())),
                        _ => return Err(format!("STACK_GLOBAL without names at byte {at} (corrupt file)")),
                    }
                }
                BINPUT => {
                    let i = self.u8()? as u32;
                    self.memo_put(i)?;
                }
                LONG_BINPUT => {
                    let i = self.u32()?;
                    self.memo_put(i)?;
                }
                MEMOIZE => {
                    let i = self.memo.len() as u32;
                    self.memo_put(i)?;
                }
                BINGET => {
                    let i = self.u8()? as u32;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                LONG_BINGET => {
                    let i = self.u32()?;
                    let v = self.memo_get(i)?;
                    self.stack.push(v);
                }
                EMPTY_DICT => self.stack.push(Value::Dict(Default::default())),
                EMPTY_LIST => self.stack.push(Value::List(Default::default())),
                EMPTY_TUPLE => self.stack.push(Value::Tuple(Rc::new(Vec::new()))),
                DICT => {
                    let items = self.pop_mark()?;
                    let dict = Value::Dict(Default::default());
                    set_items(&dict, items, at)?;
                    self.stack.push(dict);
                }
                LIST => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                TUPLE => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = (op - TUPLE1 + 1) as usize;
                    if self.stack.len() < n {
                        return Err(format!("pickle stack empty at byte {at} (corrupt file)"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(Rc::new(items)));
                }
                BINUNICODE => {
                    let n = self.u32()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                SHORT_BINUNICODE => {
                    let n = self.u8()? as usize;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                BINUNICODE8 => {
                    let n = usize::try_from(self.u64()?).map_err(|_| "string too long".to_string())?;
                    let v = self.utf8(n)?;
                    self.stack.push(v);
                }
                BINSTRING | BINBYTES => {
                    let n = self.u32()? as usize;
                    let v = self.latin1(n)?;
                    self.stack.push(v);
                }
                SHORT_BINSTRING | SHORT_BINBYTES => {
                    let n = self.u8()? as usize;
                    let v = self.latin1(n)?;
                    self.stack.push(v);
                }
                BININT => {
                    let v = self.u32()? as i32 as i64;
                    self.stack.push(Value::Int(v));
                }
                BININT1 => {
                    let v = self.u8()? as i64;
                    self.stack.push(Value::Int(v));
                }
                BININT2 => {
                    let b = self.take(2)?;
                    self.stack.push(Value::Int(u16::from_le_bytes([b[0], b[1]]) as i64));
                }
                LONG1 | LONG4 => {
                    let n = if op == LONG1 { self.u8()? as usize } else { self.u32()? as usize };
                    let b = self.take(n)?;
                    self.stack.push(long(b));
                }
                BINFLOAT => {
                    self.take(8)?;
                    self.stack.push(Value::Float);
                }
                NONE => self.stack.push(Value::None),
                NEWTRUE => self.stack.push(Value::Bool(true)),
                NEWFALSE => self.stack.push(Value::Bool(false)),
                REDUCE => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.call(&callable, &args, at)?;
                    self.stack.push(v);
                }
                NEWOBJ => {
                    self.pop()?;
                    let class = self.pop()?;
                    self.stack.push(Value::Object(global_name(&class).into()));
                }
                BUILD => {
                    // The state set on an object: for a state dict the
                    // OrderedDict's `_metadata` (module versions), which
                    // loading weights does not need.
                    self.pop()?;
                    self.top()?;
                }
                BINPERSID => {
                    let pid = self.pop()?;
                    let v = self.persistent_load(&pid)?;
                    self.stack.push(v);
                }
                SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let dict = self.top()?.clone();
                    set_items(&dict, vec![k, v], at)?;
                }
                SETITEMS => {
                    let items = self.pop_mark()?;
                    let dict = self.top()?.clone();
                    set_items(&dict, items, at)?;
                }
                APPEND | APPENDS => {
                    let items = if op == APPEND { vec![self.pop()?] } else { self.pop_mark()? };
                    match self.top()? {
                        Value::List(l) => l.borrow_mut().extend(items),
                        other => {
                            return Err(format!(
                                "APPEND to a {} at byte {at} (corrupt file)",
                                other.describe()
                            ))
                        }
                    }
                }
                other => {
                    return Err(format!(
                        "unsupported pickle opcode 0x{other:02x} at byte {at} (not a torch.save state dict, or a corrupt file)"
                    ))
                }
            }
        }
    }

    /// REDUCE: the few callables a state dict uses; anything else becomes
    /// an inert [`Value::Object`] naming it.
    fn call(&mut self, callable: &Value, args: &Value, at: usize) -> Step<Value> {
        let name = global_name(callable);
        let Value::Tuple(args) = args else {
            return Err(format!(
                "REDUCE without an argument tuple at byte {at} (corrupt file)"
            ));
        };
        match name.as_str() {
            "collections.OrderedDict" | "builtins.dict" | "__builtin__.dict" => {
                let dict = Value::Dict(Default::default());
                // OrderedDict([(k, v), ...]): older pickles pass the items.
                if let Some(Value::List(pairs)) = args.first() {
                    for pair in pairs.borrow().iter() {
                        match pair {
                            Value::Tuple(kv) if kv.len() == 2 => {
                                set_items(&dict, vec![kv[0].clone(), kv[1].clone()], at)?
                            }
                            _ => {
                                return Err(format!("OrderedDict item is not a pair at byte {at}"))
                            }
                        }
                    }
                }
                Ok(dict)
            }
            // (storage, storage_offset, size, stride, requires_grad,
            // backward_hooks[, metadata]); `_rebuild_tensor` is the first four.
            "torch._utils._rebuild_tensor_v2" | "torch._utils._rebuild_tensor" => {
                let bad =
                    || format!("{name} with unexpected arguments at byte {at} (corrupt file)");
                let storage = match args.first() {
                    Some(Value::Storage(s)) => s.as_ref().clone(),
                    _ => return Err(bad()),
                };
                let offset = args.get(1).and_then(Value::int).ok_or_else(bad)?;
                let size = args.get(2).and_then(Value::ints).ok_or_else(bad)?;
                let stride = args.get(3).and_then(Value::ints).ok_or_else(bad)?;
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage,
                    offset,
                    size,
                    stride,
                })))
            }
            // nn.Parameter(data, requires_grad, hooks): the data is the tensor.
            "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
                match args.first() {
                    Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                    _ => Err(format!(
                        "{name} without a tensor at byte {at} (corrupt file)"
                    )),
                }
            }
            _ => Ok(Value::Object(name.into())),
        }
    }

    /// BINPERSID: torch's `('storage', storage_type, key, location, numel[,
    /// view_metadata])`; the location is ignored, storages load on the CPU.
    fn persistent_load(&mut self, pid: &Value) -> Step<Value> {
        let Value::Tuple(t) = pid else {
            return Err(format!(
                "a persistent id is a {} (corrupt file)",
                pid.describe()
            ));
        };
        match t.first() {
            Some(Value::Str(s)) if s == "storage" => {}
            Some(Value::Str(s)) => {
                return Err(format!(
                    "holds a pickled `{s}` (a whole model?), not only tensors; save `model.state_dict()`"
                ))
            }
            _ => return Err("a persistent id without its type (corrupt file)".into()),
        }
        if t.len() != 5 && t.len() != 6 {
            return Err(format!("a storage id of {} fields (corrupt file)", t.len()));
        }
        let class = global_name(&t[1]);
        let kind =
            storage_kind(&class).ok_or_else(|| format!("storage type {class} is not supported"))?;
        let key = key_string(&t[2])?;
        let numel = t[4]
            .int()
            .filter(|&n| n >= 0)
            .ok_or_else(|| format!("storage {key} without a size (corrupt file)"))?;
        // Legacy files name a view of a storage as (view_key, offset, size).
        let view = match t.get(5) {
            None | Some(Value::None) => None,
            Some(Value::Tuple(v)) if v.len() == 3 => match (v[1].int(), v[2].int()) {
                (Some(o), Some(n)) => Some((o, n)),
                _ => return Err(format!("storage {key}: a bad view (corrupt file)")),
            },
            Some(_) => return Err(format!("storage {key}: a bad view (corrupt file)")),
        };
        match self.storages.get(&key) {
            Some(&(k, n)) if k != kind || n != numel => {
                return Err(format!(
                    "storage {key} is named with two types or sizes (corrupt file)"
                ))
            }
            _ => {
                self.storages.insert(key.clone(), (kind, numel));
            }
        }
        Ok(Value::Storage(Rc::new(StorageRef { key, numel, view })))
    }
}

/// `module.name` of a GLOBAL (or what an object was made from).
fn global_name(v: &Value) -> String {
    match v {
        Value::Global(g) | Value::Object(g) => g.to_string(),
        other => other.describe(),
    }
}

/// A LONG1/LONG4 integer: little-endian two's complement.
fn long(b: &[u8]) -> Value {
    if b.len() > 8 {
        return Value::BigInt(b.to_vec());
    }
    let fill = if b.last().is_some_and(|&x| x & 0x80 != 0) {
        0xff
    } else {
        0
    };
    let mut full = [fill; 8];
    full[..b.len()].copy_from_slice(b);
    Value::Int(i64::from_le_bytes(full))
}

/// SETITEM(S): key/value pairs into a dict, a repeated key replacing the old value.
fn set_items(dict: &Value, items: Vec<Value>, at: usize) -> Step<()> {
    let Value::Dict(d) = dict else {
        return Err(format!(
            "SETITEM on a {} at byte {at} (corrupt file)",
            dict.describe()
        ));
    };
    if !items.len().is_multiple_of(2) {
        return Err(format!(
            "SETITEMS with an odd count at byte {at} (corrupt file)"
        ));
    }
    let mut d = d.borrow_mut();
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        let same = |old: &Value| match (old, &k) {
            (Value::Str(a), Value::Str(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            _ => false,
        };
        match d.iter_mut().find(|(old, _)| same(old)) {
            Some(slot) => slot.1 = v,
            None => d.push((k, v)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes protocol-2 pickles the way torch.save does.
    #[derive(Default)]
    struct Pickle(Vec<u8>);

    impl Pickle {
        fn op(&mut self, op: u8) -> &mut Self {
            self.0.push(op);
            self
        }
        fn proto(&mut self) -> &mut Self {
            self.op(PROTO).op(2)
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.op(BINUNICODE);
            self.0.extend((s.len() as u32).to_le_bytes());
            self.0.extend(s.as_bytes());
            self
        }
        fn global(&mut self, module: &str, name: &str) -> &mut Self {
            self.op(GLOBAL);
            self.0.extend(format!("{module}\n{name}\n").as_bytes());
            self
        }
        fn int(&mut self, i: u8) -> &mut Self {
            self.op(BININT1).op(i)
        }
        /// `_rebuild_tensor_v2(('storage', T, key, 'cpu', numel, None), offset, size, stride, False, OrderedDict())`.
        fn tensor(
            &mut self,
            class: &str,
            key: &str,
            numel: u8,
            size: &[u8],
            stride: &[u8],
        ) -> &mut Self {
            self.global("torch._utils", "_rebuild_tensor_v2").op(MARK);
            self.op(MARK)
                .str("storage")
                .global("torch", class)
                .str(key)
                .str("cpu")
                .int(numel);
            self.op(NONE).op(TUPLE).op(BINPERSID).int(0);
            for dims in [size, stride] {
                self.op(MARK);
                for &d in dims {
                    self.int(d);
                }
                self.op(TUPLE);
            }
            self.op(NEWFALSE)
                .op(BINGET)
                .op(0)
                .op(EMPTY_TUPLE)
                .op(REDUCE);
            self.op(TUPLE).op(REDUCE)
        }
    }

    /// A legacy torch.save file of {'w': a [3, 2] transposed view of a
    /// [2, 3] float storage, 'n': an int64 scalar -7, 'note': a string}.
    fn legacy_file() -> Vec<u8> {
        let mut p = Pickle::default();
        p.proto().op(LONG1).op(10);
        p.0.extend(LEGACY_MAGIC);
        p.op(STOP);
        p.proto().op(BININT2).op(0xe9).op(0x03).op(STOP);
        p.proto()
            .op(EMPTY_DICT)
            .op(MARK)
            .str("little_endian")
            .op(NEWTRUE)
            .op(SETITEMS)
            .op(STOP);
        p.proto()
            .global("collections", "OrderedDict")
            .op(BINPUT)
            .op(0);
        p.op(EMPTY_TUPLE).op(REDUCE).op(MARK);
        p.str("w")
            .tensor("FloatStorage", "140", 6, &[3, 2], &[1, 3]);
        p.str("n").tensor("LongStorage", "7", 1, &[], &[]);
        p.str("note").str("not a tensor");
        p.op(SETITEMS);
        // The `_metadata` attribute torch sets on a state dict.
        p.op(EMPTY_DICT)
            .str("_metadata")
            .op(EMPTY_DICT)
            .op(SETITEM)
            .op(BUILD)
            .op(STOP);
        p.proto()
            .op(EMPTY_LIST)
            .op(MARK)
            .str("140")
            .str("7")
            .op(APPENDS)
            .op(STOP);
        p.0.extend(6u64.to_le_bytes());
        for v in 0..6 {
            p.0.extend((v as f32).to_le_bytes());
        }
        p.0.extend(1u64.to_le_bytes());
        p.0.extend((-7i64).to_le_bytes());
        p.0
    }

    #[test]
    fn legacy_file_honours_strides_and_int64() {
        let tensors = read_legacy(&legacy_file()).expect("read");
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["w", "n"]);
        let w = &tensors[0].1;
        assert_eq!(w.size(), [3, 2]);
        assert_eq!(w.kind(), Kind::Float);
        let got = Vec::<f32>::try_from(w.contiguous().view([-1])).expect("floats");
        assert_eq!(got, [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        let n = &tensors[1].1;
        assert_eq!((n.kind(), n.dim()), (Kind::Int64, 0));
        assert_eq!(n.int64_value(&[]), -7);
    }

    #[test]
    fn truncated_legacy_file_is_an_error_not_a_panic() {
        let full = legacy_file();
        for cut in 0..full.len() {
            let err = read_legacy(&full[..cut]).expect_err("a truncated file must not load");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn a_view_past_its_storage_is_refused() {
        let mut file = legacy_file();
        // Stride 3 -> 4 on 'w': its last element would be storage element 6 of 0..6.
        let at = file
            .windows(4)
            .position(|w| w == [MARK, BININT1, 1, BININT1])
            .expect("the stride tuple");
        file[at + 4] = 4;
        let err = read_legacy(&file).expect_err("out of bounds");
        assert!(err.contains("w: sizes [3, 2], strides [1, 4]"), "{err}");
    }
}
