//! A restricted unpickler: the opcodes and globals of a state_dict, nothing else.
use super::objects::{global_name, kind, pairs, resolve_global, Global, Obj, StorageRef, TensorObj, Value};
use super::opcodes::*;
use super::RawTensor;
use std::collections::HashMap;
use std::sync::Arc;

// ---------------------------------------------------------------------------
// Pickle: a restricted unpickler.
//
// Pickle is a stack machine: opcodes push values, build containers from the
// values above the last MARK, store/fetch values in a memo, and call
// functions named by GLOBAL with REDUCE. Here GLOBAL only resolves the names in
// `Global`, so REDUCE can only rebuild tensors and make empty dicts.
// ---------------------------------------------------------------------------

/// Reads the bytes of storage `key` (a zip entry).
pub(super) type LoadStorage<'a> = dyn FnMut(&str) -> Result<Vec<u8>, String> + 'a;

pub(super) struct Unpickler<'a> {
    pub(super) pkl: &'a [u8],
    pub(super) pos: usize,
    pub(super) stack: Vec<Value>,
    /// Stack heights at each open MARK.
    pub(super) marks: Vec<usize>,
    pub(super) memo: HashMap<u32, Value>,
    pub(super) objs: Vec<Obj>,
    pub(super) storages: Vec<StorageRef>,
    /// The element type each storage key is named with (a second type is refused).
    pub(super) storage_types: HashMap<std::rc::Rc<str>, super::Dtype>,
    /// Lists already turned into an `OrderedDict` (each makes one).
    pub(super) pair_lists: std::collections::HashSet<usize>,
    pub(super) tensors: Vec<TensorObj>,
    /// Storage bytes by key: one `Arc` per key.
    pub(super) loaded: HashMap<String, Arc<Vec<u8>>>,
    /// Reads storage `key` when the pickle first names it; `None` when the bytes come
    /// after the pickle (the legacy format), to be put into `loaded` before
    /// `into_state_dict`.
    pub(super) load: Option<&'a mut LoadStorage<'a>>,
}

/// Runs `pkl` and turns its dict of tensors into `RawTensor`s; `load(key)`
/// returns the bytes of storage `key` (zip entry `<archive>/data/<key>`).
pub(super) fn unpickle_state_dict(pkl: &[u8], load: &mut LoadStorage<'_>) -> Result<Vec<RawTensor>, String> {
    let mut u = Unpickler::new(pkl, load);
    let top = u.run()?;
    u.into_state_dict(top)
}

impl<'a> Unpickler<'a> {
    pub(super) fn new(pkl: &'a [u8], load: &'a mut LoadStorage<'a>) -> Self {
        Unpickler {
            load: Some(load),
            ..Self::deferred(pkl)
        }
    }

    /// An unpickler that reads no storage bytes itself (see `load`).
    pub(super) fn deferred(pkl: &'a [u8]) -> Self {
        Unpickler {
            pkl,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            objs: Vec::new(),
            storages: Vec::new(),
            storage_types: HashMap::new(),
            pair_lists: std::collections::HashSet::new(),
            tensors: Vec::new(),
            loaded: HashMap::new(),
            load: None,
        }
    }

    /// Executes opcodes up to STOP and returns the pickled object.
    pub(super) fn run(&mut self) -> Result<Value, String> {
        loop {
            let at = self.pos;
            let Some(&op) = self.pkl.get(at) else {
                return Err("truncated (the pickle ends without a STOP opcode)".into());
            };
            self.pos += 1;
            match self.step(op) {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => return Err(format!("byte {at}: {e}")),
            }
        }
    }

    pub(super) fn step(&mut self, op: u8) -> Result<Option<Value>, String> {
        match op {
            PROTO => {
                let v = self.read_u8()?;
                if v > 5 {
                    return Err(format!("unsupported pickle protocol {v}"));
                }
            }
            FRAME => {
                self.take(8)?; // frame length: framing is irrelevant when the whole pickle is in memory
            }
            STOP => return Ok(Some(self.pop()?)),
            MARK => self.marks.push(self.stack.len()),
            BINPUT | LONG_BINPUT | MEMOIZE | BINGET | LONG_BINGET => self.memo_op(op)?,
            BININT | BININT1 | BININT2 | LONG1 | BINFLOAT => self.number_op(op)?,
            BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 | BINSTRING | SHORT_BINSTRING | NONE | NEWTRUE | NEWFALSE => {
                self.text_op(op)?
            }
            EMPTY_DICT | EMPTY_LIST | EMPTY_TUPLE | TUPLE | TUPLE1 | TUPLE2 | TUPLE3 | LIST | APPEND | APPENDS
            | DICT | SETITEM | SETITEMS => self.container_op(op)?,
            GLOBAL | STACK_GLOBAL | REDUCE | NEWOBJ | BUILD | BINPERSID => self.object_op(op)?,
            _ => {
                return Err(format!(
                    "unsupported pickle opcode 0x{op:02x} ({}); a state_dict does not need it",
                    unsupported_opcode_name(op)
                ));
            }
        }
        Ok(None)
    }

    /// BINPUT, LONG_BINPUT, MEMOIZE, BINGET, LONG_BINGET: the memo.
    fn memo_op(&mut self, op: u8) -> Result<(), String> {
        match op {
            BINPUT => {
                let i = self.read_u8()?;
                self.memo_put(u32::from(i))?
            }
            LONG_BINPUT => {
                let i = self.read_u32()?;
                self.memo_put(i)?
            }
            MEMOIZE => {
                let i = u32::try_from(self.memo.len()).map_err(|_| "memo overflow")?;
                self.memo_put(i)?
            }
            BINGET => {
                let i = self.read_u8()?;
                self.memo_get(u32::from(i))?
            }
            LONG_BINGET => {
                let i = self.read_u32()?;
                self.memo_get(i)?
            }
            _ => return Err(format!("internal error: opcode 0x{op:02x} dispatched to memo_op")),
        }
        Ok(())
    }

    /// BININT, BININT1, BININT2, LONG1, BINFLOAT.
    fn number_op(&mut self, op: u8) -> Result<(), String> {
        match op {
            BININT => {
                let v = i32::from_le_bytes(self.array()?);
                self.stack.push(Value::Int(v.into()))
            }
            BININT1 => {
                let v = self.read_u8()?;
                self.stack.push(Value::Int(v.into()))
            }
            BININT2 => {
                let v = u16::from_le_bytes(self.array()?);
                self.stack.push(Value::Int(v.into()))
            }
            LONG1 => {
                // n bytes of little-endian two's complement.
                let n = usize::from(self.read_u8()?);
                let bytes = self.take(n)?;
                if n > 8 {
                    return Err(format!("integer of {n} bytes does not fit in 64 bits"));
                }
                let fill = if bytes.last().is_some_and(|&b| b & 0x80 != 0) {
                    0xFF
                } else {
                    0
                };
                let mut buf = [fill; 8];
                buf.get_mut(..n).ok_or("bad LONG1")?.copy_from_slice(bytes);
                self.stack.push(Value::Int(i64::from_le_bytes(buf)))
            }
            BINFLOAT => {
                let v = f64::from_be_bytes(self.array()?);
                self.stack.push(Value::Float(v))
            }
            _ => return Err(format!("internal error: opcode 0x{op:02x} dispatched to number_op")),
        }
        Ok(())
    }

    /// Strings (BINUNICODE, ..., Python 2 BINSTRING), None, True and False.
    fn text_op(&mut self, op: u8) -> Result<(), String> {
        match op {
            BINUNICODE | SHORT_BINUNICODE | BINUNICODE8 => {
                let n = match op {
                    SHORT_BINUNICODE => u64::from(self.read_u8()?),
                    BINUNICODE => u64::from(self.read_u32()?),
                    _ => u64::from_le_bytes(self.array()?),
                };
                let n = usize::try_from(n).map_err(|_| "string too long")?;
                let s = std::str::from_utf8(self.take(n)?).map_err(|_| "string is not valid UTF-8")?;
                self.stack.push(Value::Str(s.into()))
            }
            BINSTRING | SHORT_BINSTRING => {
                // Python 2 byte strings, which Python 3 decodes as text;
                // Latin-1 maps every byte to one char.
                let n = if op == SHORT_BINSTRING {
                    usize::from(self.read_u8()?)
                } else {
                    let n = i32::from_le_bytes(self.array()?);
                    usize::try_from(n).map_err(|_| "negative BINSTRING length")?
                };
                let s: String = self.take(n)?.iter().map(|&b| char::from(b)).collect();
                self.stack.push(Value::Str(s.into()))
            }
            NONE => self.stack.push(Value::None),
            NEWTRUE => self.stack.push(Value::Bool(true)),
            NEWFALSE => self.stack.push(Value::Bool(false)),
            _ => return Err(format!("internal error: opcode 0x{op:02x} dispatched to text_op")),
        }
        Ok(())
    }

    /// Tuples, lists and dicts: empty ones, from the stack above a MARK, appends and items.
    fn container_op(&mut self, op: u8) -> Result<(), String> {
        match op {
            EMPTY_DICT => self.push_obj(Obj::Dict(Vec::new())),
            EMPTY_LIST => self.push_obj(Obj::List(Vec::new())),
            EMPTY_TUPLE => self.push_obj(Obj::Tuple(Vec::new())),
            TUPLE => {
                let items = self.pop_mark()?;
                self.push_obj(Obj::Tuple(items))
            }
            TUPLE1 | TUPLE2 | TUPLE3 => {
                let n = usize::from(op - TUPLE1 + 1);
                let floor = self.floor();
                if self.stack.len() < floor + n {
                    return Err("stack underflow".into());
                }
                let items = self.stack.split_off(self.stack.len() - n);
                self.push_obj(Obj::Tuple(items))
            }
            LIST => {
                let items = self.pop_mark()?;
                self.push_obj(Obj::List(items))
            }
            APPEND => {
                let v = self.pop()?;
                self.top_list()?.push(v)
            }
            APPENDS => {
                let items = self.pop_mark()?;
                self.top_list()?.extend(items)
            }
            DICT => {
                let items = self.pop_mark()?;
                let pairs = pairs(items)?;
                self.push_obj(Obj::Dict(pairs))
            }
            SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                self.top_dict()?.push((k, v))
            }
            SETITEMS => {
                let items = self.pop_mark()?;
                let items = pairs(items)?;
                self.top_dict()?.extend(items)
            }
            _ => return Err(format!("internal error: opcode 0x{op:02x} dispatched to container_op")),
        }
        Ok(())
    }

    /// GLOBAL, STACK_GLOBAL (whitelisted names only), REDUCE, NEWOBJ, BUILD, BINPERSID.
    fn object_op(&mut self, op: u8) -> Result<(), String> {
        match op {
            GLOBAL => {
                let module = self.read_line()?;
                let name = self.read_line()?;
                self.stack.push(Value::Global(resolve_global(&module, &name)?))
            }
            STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return Err("STACK_GLOBAL expects two strings".into());
                };
                self.stack.push(Value::Global(resolve_global(&module, &name)?))
            }
            REDUCE => {
                let args = self.pop()?;
                let func = self.pop()?;
                let args = self.tuple(&args, "REDUCE arguments")?.to_vec();
                let Value::Global(func) = func else {
                    return Err(format!("REDUCE calls a {}", kind(&func)));
                };
                let result = self.call(func, args)?;
                self.stack.push(result)
            }
            NEWOBJ => {
                // cls.__new__(cls, *args): only OrderedDict() is allowed.
                let args = self.pop()?;
                let cls = self.pop()?;
                let no_args = self.tuple(&args, "NEWOBJ arguments")?.is_empty();
                match cls {
                    Value::Global(Global::OrderedDict) if no_args => self.push_obj(Obj::Dict(Vec::new())),
                    Value::Global(g) => return Err(format!("NEWOBJ of `{}` is not supported", global_name(g))),
                    other => return Err(format!("NEWOBJ of a {}", kind(&other))),
                }
            }
            BUILD => {
                // Sets an object's state: on a state_dict's OrderedDict that is
                // `_metadata` (per-module versions), which tensors do not need.
                let _state = self.pop()?;
                match self.top()? {
                    Value::Dict(_) => {}
                    other => return Err(format!("BUILD on a {} is not supported", kind(other))),
                }
            }
            BINPERSID => {
                let pid = self.pop()?;
                let storage = self.persistent_load(&pid)?;
                self.stack.push(storage)
            }
            _ => return Err(format!("internal error: opcode 0x{op:02x} dispatched to object_op")),
        }
        Ok(())
    }

    // -- reading the pickle bytes ------------------------------------------

    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let pkl: &'a [u8] = self.pkl;
        let s = self
            .pos
            .checked_add(n)
            .and_then(|end| pkl.get(self.pos..end))
            .ok_or("truncated (the pickle ends inside an opcode's argument)")?;
        self.pos += n;
        Ok(s)
    }
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        self.take(N)?
            .try_into()
            .map_err(|_| "internal error: array size".to_string())
    }
    pub(super) fn read_u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }
    pub(super) fn read_u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    /// A newline-terminated line (GLOBAL's arguments).
    pub(super) fn read_line(&mut self) -> Result<String, String> {
        let rest = self.pkl.get(self.pos..).unwrap_or_default();
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("truncated (GLOBAL without its newline)")?;
        let line = String::from_utf8_lossy(self.take(n)?).into_owned();
        self.pos += 1;
        Ok(line)
    }

    // -- the stack, marks and memo -----------------------------------------

    /// Values below the innermost MARK are out of reach until it is popped.
    pub(super) fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }
    pub(super) fn pop(&mut self) -> Result<Value, String> {
        if self.stack.len() <= self.floor() {
            return Err("stack underflow".into());
        }
        self.stack.pop().ok_or_else(|| "stack underflow".into())
    }
    pub(super) fn top(&self) -> Result<&Value, String> {
        if self.stack.len() <= self.floor() {
            return Err("stack underflow".into());
        }
        self.stack.last().ok_or_else(|| "stack underflow".into())
    }
    /// Pops everything above the innermost MARK, and the MARK.
    pub(super) fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("MARK missing")?;
        if mark > self.stack.len() {
            return Err("stack underflow".into());
        }
        Ok(self.stack.split_off(mark))
    }
    pub(super) fn memo_put(&mut self, i: u32) -> Result<(), String> {
        let v = self.top()?.clone();
        self.memo.insert(i, v);
        Ok(())
    }
    pub(super) fn memo_get(&mut self, i: u32) -> Result<(), String> {
        let v = self
            .memo
            .get(&i)
            .ok_or_else(|| format!("memo has no entry {i}"))?
            .clone();
        self.stack.push(v);
        Ok(())
    }

    // -- containers ----------------------------------------------------------

    /// Puts a new container in the arena and returns the value naming it.
    pub(super) fn new_obj(&mut self, obj: Obj) -> Value {
        let i = self.objs.len();
        let v = match obj {
            Obj::Tuple(_) => Value::Tuple(i),
            Obj::List(_) => Value::List(i),
            Obj::Dict(_) => Value::Dict(i),
        };
        self.objs.push(obj);
        v
    }
    pub(super) fn push_obj(&mut self, obj: Obj) {
        let v = self.new_obj(obj);
        self.stack.push(v);
    }
    pub(super) fn tuple(&self, v: &Value, what: &str) -> Result<&[Value], String> {
        match v {
            Value::Tuple(i) => match self.objs.get(*i) {
                Some(Obj::Tuple(items)) => Ok(items),
                _ => Err("internal error: tuple".into()),
            },
            other => Err(format!("{what}: expected a tuple, found a {}", kind(other))),
        }
    }
    pub(super) fn top_list(&mut self) -> Result<&mut Vec<Value>, String> {
        let i = match self.top()? {
            Value::List(i) => *i,
            other => return Err(format!("APPEND to a {}", kind(other))),
        };
        match self.objs.get_mut(i) {
            Some(Obj::List(items)) => Ok(items),
            _ => Err("internal error: list".into()),
        }
    }
    pub(super) fn top_dict(&mut self) -> Result<&mut Vec<(Value, Value)>, String> {
        let i = match self.top()? {
            Value::Dict(i) => *i,
            other => return Err(format!("SETITEM on a {}", kind(other))),
        };
        match self.objs.get_mut(i) {
            Some(Obj::Dict(items)) => Ok(items),
            _ => Err("internal error: dict".into()),
        }
    }
}
