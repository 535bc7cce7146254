//! What the restricted unpickler builds: its values and containers, the whitelist of globals, and
//! the torch calls it allows (rebuilding tensors from storages), then the state_dict it returns.
use super::pickle::Unpickler;
use super::{Dtype, RawTensor};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// The only globals a state_dict may name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Global {
    /// `collections.OrderedDict`: called with `()` it makes an empty dict.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`
    RebuildTensorV2,
    /// `torch._utils._rebuild_tensor` (files from PyTorch < 0.4)
    RebuildTensor,
    /// `torch._utils._rebuild_parameter`
    RebuildParameter,
    /// `torch.FloatStorage`, `torch.cuda.FloatStorage` etc.: dtype markers inside persistent ids.
    StorageClass(Dtype),
    /// `torch.serialization._get_layout`
    GetLayout,
    /// `torch.strided`
    Strided,
}

pub(super) fn resolve_global(module: &str, name: &str) -> Result<Global, String> {
    Ok(match (module, name) {
        ("collections", "OrderedDict") => Global::OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensorV2,
        ("torch._utils", "_rebuild_tensor") => Global::RebuildTensor,
        ("torch._utils", "_rebuild_parameter") => Global::RebuildParameter,
        ("torch.serialization", "_get_layout") => Global::GetLayout,
        ("torch", "strided") => Global::Strided,
        // Only the element type matters: storages are read to the CPU wherever they were saved.
        ("torch" | "torch.cuda", _) if name.ends_with("Storage") => match Dtype::from_storage_class(name) {
            Some(dtype) => Global::StorageClass(dtype),
            None => return Err(format!("unsupported tensor storage type `{module}.{name}`")),
        },
        _ => {
            return Err(format!(
                "refuses to call `{module}.{name}` (only tensors and dicts are read)"
            ))
        }
    })
}

/// A value on the pickle stack. Containers are indices into the unpickler's
/// arenas, which gives pickle's shared-reference semantics (a memoized dict
/// that is later filled is the same dict) and makes cloning O(1).
#[derive(Clone, Debug)]
pub(super) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(#[allow(dead_code)] f64), // parsed, never needed by a state_dict
    Str(Rc<str>),
    Tuple(usize),
    List(usize),
    Dict(usize),
    Global(Global),
    Storage(usize),
    Tensor(usize),
    Layout,
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::None => "None",
        Value::Bool(_) => "bool",
        Value::Int(_) => "int",
        Value::Float(_) => "float",
        Value::Str(_) => "string",
        Value::Tuple(_) => "tuple",
        Value::List(_) => "list",
        Value::Dict(_) => "dict",
        Value::Global(_) => "global",
        Value::Storage(_) => "storage",
        Value::Tensor(_) => "tensor",
        Value::Layout => "layout",
    }
}

pub(super) enum Obj {
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// Insertion-ordered; a repeated key is resolved at the end.
    Dict(Vec<(Value, Value)>),
}

/// A storage named by a persistent id; its bytes are `Unpickler::loaded[key]`.
pub(super) struct StorageRef {
    pub(super) dtype: Dtype,
    pub(super) numel: i64,
    pub(super) key: Rc<str>,
}

pub(super) struct TensorObj {
    pub(super) dtype: Dtype,
    pub(super) shape: Vec<i64>,
    pub(super) strides: Vec<i64>,
    pub(super) storage_offset: i64,
    /// Index into `Unpickler::storages`.
    pub(super) storage: usize,
    pub(super) requires_grad: bool,
}

/// Tensors with more dimensions than this are refused (torch itself caps
/// most operations at 25); it also keeps hostile pickles linear-time.
pub(super) const MAX_DIMS: usize = 64;

impl Unpickler<'_> {
    // -- torch ---------------------------------------------------------------

    /// REDUCE: `func(*args)` for the whitelisted callables.
    pub(super) fn call(&mut self, func: Global, args: Vec<Value>) -> Result<Value, String> {
        match func {
            Global::OrderedDict => {
                let items = match args.as_slice() {
                    [] => Vec::new(),
                    // Python 2 pickles `OrderedDict([[key, value], ...])`.
                    [Value::List(l)] => self.pairs_list(*l)?,
                    _ => return Err("collections.OrderedDict called with arguments other than a list of pairs".into()),
                };
                Ok(self.new_obj(Obj::Dict(items)))
            }
            Global::RebuildTensorV2 | Global::RebuildTensor => self.rebuild_tensor(func, &args),
            Global::RebuildParameter => {
                let [Value::Tensor(t), Value::Bool(requires_grad), Value::Dict(_)] = args.as_slice() else {
                    return Err("_rebuild_parameter expects (tensor, requires_grad, backward_hooks)".into());
                };
                let t = self.tensors.get(*t).ok_or("internal error: tensor")?;
                let param = TensorObj {
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    strides: t.strides.clone(),
                    storage_offset: t.storage_offset,
                    storage: t.storage,
                    requires_grad: *requires_grad,
                };
                self.tensors.push(param);
                Ok(Value::Tensor(self.tensors.len() - 1))
            }
            Global::GetLayout => match args.as_slice() {
                [Value::Str(s)] if &**s == "torch.strided" => Ok(Value::Layout),
                _ => Err("only the strided layout is supported".into()),
            },
            Global::StorageClass(_) | Global::Strided => Err(format!("`{}` is not callable", global_name(func))),
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad,
    /// backward_hooks[, metadata])` or `_rebuild_tensor(storage, storage_offset, size, stride)`.
    pub(super) fn rebuild_tensor(&mut self, func: Global, args: &[Value]) -> Result<Value, String> {
        let (storage_index, offset, size, stride, requires_grad) = match (func, args) {
            (
                Global::RebuildTensorV2,
                [Value::Storage(s), Value::Int(o), size, stride, Value::Bool(rg), Value::Dict(_)]
                | [Value::Storage(s), Value::Int(o), size, stride, Value::Bool(rg), Value::Dict(_), _],
            ) => (*s, *o, size, stride, *rg),
            (Global::RebuildTensor, [Value::Storage(s), Value::Int(o), size, stride]) => (*s, *o, size, stride, false),
            (Global::RebuildTensorV2, _) => return Err("_rebuild_tensor_v2 expects (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])".into()),
            _ => return Err("_rebuild_tensor expects (storage, storage_offset, size, stride)".into()),
        };
        let shape = self.int_tuple(size, "size")?;
        let strides = self.int_tuple(stride, "stride")?;
        let storage = self.storages.get(storage_index).ok_or("internal error: storage")?;
        if shape.len() != strides.len() {
            return Err(format!("tensor size {shape:?} and stride {strides:?} differ in length"));
        }
        if offset < 0 || shape.iter().chain(&strides).any(|&v| v < 0) {
            return Err(format!(
                "negative size, stride or offset (size {shape:?}, stride {strides:?}, offset {offset})"
            ));
        }
        // Every element must lie inside the storage: the last one is at
        // offset + sum((size_i - 1) * stride_i).
        let overflow = || format!("tensor size {shape:?} / stride {strides:?} overflows");
        let numel = shape
            .iter()
            .try_fold(1i64, |n, &s| n.checked_mul(s))
            .ok_or_else(overflow)?;
        if numel > 0 {
            let last = shape
                .iter()
                .zip(&strides)
                .try_fold(offset, |acc, (&s, &st)| acc.checked_add((s - 1).checked_mul(st)?))
                .ok_or_else(overflow)?;
            if last >= storage.numel {
                return Err(format!(
                    "tensor (size {shape:?}, stride {strides:?}, offset {offset}) reaches element {last} \
                     of a storage of {} elements",
                    storage.numel
                ));
            }
        }
        let tensor = TensorObj {
            dtype: storage.dtype,
            shape,
            strides,
            storage_offset: offset,
            storage: storage_index,
            requires_grad,
        };
        self.tensors.push(tensor);
        Ok(Value::Tensor(self.tensors.len() - 1))
    }

    pub(super) fn int_tuple(&self, v: &Value, what: &str) -> Result<Vec<i64>, String> {
        let items = self.tuple(v, what)?;
        if items.len() > MAX_DIMS {
            return Err(format!(
                "tensor has {} dimensions (at most {MAX_DIMS} are supported)",
                items.len()
            ));
        }
        items
            .iter()
            .map(|x| match x {
                Value::Int(i) => Ok(*i),
                other => Err(format!("{what}: expected ints, found a {}", kind(other))),
            })
            .collect()
    }

    /// BINPERSID with `('storage', torch.FloatStorage, key, location, numel)`, or the legacy
    /// format's `(..., numel, None)`. Reads the storage's bytes on first use unless they are
    /// deferred (legacy files keep them after the pickle; see legacy.rs).
    pub(super) fn persistent_load(&mut self, pid: &Value) -> Result<Value, String> {
        let items = self.tuple(pid, "persistent id")?;
        let (dtype, key, numel) = match items {
            [Value::Str(tag), Value::Global(Global::StorageClass(dtype)), Value::Str(key), Value::Str(_location), Value::Int(numel)]
            | [Value::Str(tag), Value::Global(Global::StorageClass(dtype)), Value::Str(key), Value::Str(_location), Value::Int(numel), Value::None]
                if &**tag == "storage" =>
            {
                (*dtype, Rc::clone(key), *numel)
            }
            [Value::Str(tag), _, _, _, _, Value::Tuple(_)] if &**tag == "storage" => {
                return Err("a storage view (written by PyTorch < 0.4) is not supported".into())
            }
            _ => {
                return Err(
                    "unsupported persistent id (expected ('storage', <storage type>, key, location, numel))".into(),
                )
            }
        };
        if numel < 0 {
            return Err(format!("storage `{key}` has {numel} elements"));
        }
        // torch keeps the first type's storage for a key; a file naming two is damaged or made by hand.
        let first = *self.storage_types.entry(Rc::clone(&key)).or_insert(dtype);
        if first != dtype {
            return Err(format!("storage `{key}` is named as {first:?} and as {dtype:?}"));
        }
        if let Some(load) = self.load.as_mut() {
            if !self.loaded.contains_key(&*key) {
                let data = load(&key)?;
                self.loaded.insert(key.to_string(), Arc::new(data));
            }
        }
        self.storages.push(StorageRef { dtype, numel, key });
        Ok(Value::Storage(self.storages.len() - 1))
    }

    /// The bytes of a storage, which must hold exactly its `numel` elements.
    fn storage_data(&self, storage: &StorageRef) -> Result<&Arc<Vec<u8>>, String> {
        let StorageRef { dtype, numel, key } = storage;
        let data = self
            .loaded
            .get(&**key)
            .ok_or_else(|| format!("storage `{key}` is missing from the file"))?;
        let expected = usize::try_from(*numel).ok().and_then(|n| n.checked_mul(dtype.size()));
        if expected != Some(data.len()) {
            return Err(format!(
                "storage `{key}` holds {} bytes, but the pickle says {numel} elements of {dtype:?}",
                data.len()
            ));
        }
        Ok(data)
    }

    /// A list of `[key, value]` lists or `(key, value)` tuples, as dict items. Once per list: a
    /// memoised list passed again and again would copy it each time (memory ~ the file's size
    /// squared).
    fn pairs_list(&mut self, list: usize) -> Result<Vec<(Value, Value)>, String> {
        if !self.pair_lists.insert(list) {
            return Err("collections.OrderedDict: one list of pairs passed twice".into());
        }
        let Some(Obj::List(items)) = self.objs.get(list) else {
            return Err("internal error: list".into());
        };
        items
            .iter()
            .map(|item| match item {
                Value::List(i) | Value::Tuple(i) => match self.objs.get(*i) {
                    Some(Obj::List(kv) | Obj::Tuple(kv)) if kv.len() == 2 => Ok((kv[0].clone(), kv[1].clone())),
                    _ => Err("collections.OrderedDict: an item is not a (key, value) pair".to_string()),
                },
                other => Err(format!(
                    "collections.OrderedDict: an item is a {}, not a pair",
                    kind(other)
                )),
            })
            .collect()
    }

    /// The result must be a dict of name -> tensor.
    pub(super) fn into_state_dict(self, top: Value) -> Result<Vec<RawTensor>, String> {
        let items = match &top {
            Value::Dict(i) => match self.objs.get(*i) {
                Some(Obj::Dict(items)) => items,
                _ => return Err("internal error: dict".into()),
            },
            other => return Err(format!("the file holds a {}, not a dict of tensors", kind(other))),
        };
        let keys = || {
            let names: Vec<String> = items
                .iter()
                .take(5)
                .map(|(k, _)| match k {
                    Value::Str(s) => format!("`{s}`"),
                    other => kind(other).to_string(),
                })
                .collect();
            let more = if items.len() > 5 { ", ..." } else { "" };
            format!("{}{more}", names.join(", "))
        };
        let mut out: Vec<RawTensor> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for (k, v) in items {
            let Value::Str(name) = k else {
                return Err(format!(
                    "the file holds a dict with a {} key (the file's keys: {})",
                    kind(k),
                    keys()
                ));
            };
            let t = match v {
                Value::Tensor(t) => self.tensors.get(*t).ok_or("internal error: tensor")?,
                other => {
                    return Err(format!(
                        "the file holds a dict whose values are not all tensors: `{name}` is a {} (the file's keys: {}); \
                         if this is a training checkpoint, save its model.state_dict() instead",
                        kind(other),
                        keys()
                    ));
                }
            };
            let tensor = RawTensor {
                name: name.to_string(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                strides: t.strides.clone(),
                storage_offset: t.storage_offset,
                data: Arc::clone(self.storage_data(self.storages.get(t.storage).ok_or("internal error: storage")?)?),
                requires_grad: t.requires_grad,
            };
            // As in Python, a repeated key keeps its first position and the last value.
            match index.get(&**name).and_then(|&j| out.get_mut(j)) {
                Some(slot) => *slot = tensor,
                None => {
                    index.insert(name, out.len());
                    out.push(tensor);
                }
            }
        }
        Ok(out)
    }
}

pub(super) fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>, String> {
    if !items.len().is_multiple_of(2) {
        return Err("odd number of items for a dict".into());
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

pub(super) fn global_name(g: Global) -> String {
    match g {
        Global::OrderedDict => "collections.OrderedDict".into(),
        Global::RebuildTensorV2 => "torch._utils._rebuild_tensor_v2".into(),
        Global::RebuildTensor => "torch._utils._rebuild_tensor".into(),
        Global::RebuildParameter => "torch._utils._rebuild_parameter".into(),
        Global::StorageClass(d) => format!("torch storage class for {d:?}"),
        Global::GetLayout => "torch.serialization._get_layout".into(),
        Global::Strided => "torch.strided".into(),
    }
}
