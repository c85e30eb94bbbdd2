//! The engine: chains, per-thread Lua states, the sandbox, the `fk` helpers.

use std::cell::{Cell, RefCell};
use std::ffi::c_int;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mlua::chunk::ChunkMode;
use mlua::state::{GcGenParams, GcMode};
use mlua::{
    AnyUserData, Function, HookTriggers, Lua, LuaOptions, MetaMethod, MultiValue, StdLib, Table,
    UserData, UserDataMethods, Value, VmState,
};

use super::bytes::{self, Returned};
use super::native::{self, Key};
use super::spec::{ChainSpec, Param, Stage, spec_of, valid_name};
use super::{Ctx, FilterError, Limits, Result};

/// The instruction hook runs every this many Lua instructions.
const HOOK_STEP: u32 = 1000;
/// Lua states kept per thread (one per chain).
const MAX_STATES_PER_THREAD: usize = 8;

static NEXT_CHAIN_ID: AtomicU64 = AtomicU64::new(1);

/// A filter chain, ready to run. `Send + Sync`, cheap to clone; each
/// thread runs it in its own Lua state (see the module docs).
#[derive(Clone)]
pub struct Chain {
    inner: Arc<ChainInner>,
}

struct ChainInner {
    id: u64,
    stages: Vec<Stage>,
    spec: ChainSpec,
    limits: Limits,
    /// The same chain run natively, when the benchmark switch is on
    /// ([`super::floor`]); never otherwise.
    floor: Option<super::floor::Floor>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("spec", &self.inner.spec)
            .field("limits", &self.inner.limits)
            .finish()
    }
}

/// What [`Chain::decode_report`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The plain bytes.
    pub data: Vec<u8>,
    /// When the primary was damaged (or not given, for [`Chain::recover`]):
    /// the name of the stage whose `recover` served the good copy. The
    /// caller may then rewrite the primary.
    pub recovered_by: Option<String>,
}

impl Chain {
    /// Builds a chain from its stages (in encode order). Compiles every
    /// script and runs its top level once on this thread, so a syntax
    /// error, a missing `encode`/`decode` or a missing key is reported
    /// here (FK0900, FK0907) rather than at the first call.
    pub fn new(stages: Vec<Stage>, limits: Limits) -> Result<Chain> {
        for s in &stages {
            if !valid_name(s.script.name()) {
                return Err(FilterError::Load {
                    script: s.script.name().to_owned(),
                    why: "a filter name is 1-64 characters from A-Za-z0-9._- not starting with '.'"
                        .into(),
                });
            }
        }
        let spec = spec_of(&stages);
        let floor = if super::floor::enabled() && !stages.is_empty() {
            super::floor::Floor::for_spec(&spec)
        } else {
            None
        };
        let inner = Arc::new(ChainInner {
            id: NEXT_CHAIN_ID.fetch_add(1, Ordering::Relaxed),
            spec,
            stages,
            limits,
            floor,
        });
        if !inner.stages.is_empty() {
            let worker = Worker::new(&inner)?;
            put_back(inner.id, Box::new(worker));
        }
        Ok(Chain { inner })
    }

    /// Builds the chain a record describes, with the scripts found in
    /// `dir` ([`ChainSpec::resolve`]).
    pub fn from_spec(spec: &ChainSpec, dir: &Path, limits: Limits) -> Result<Chain> {
        Chain::new(spec.resolve(dir)?, limits)
    }

    /// The chain's description, to record with what it writes.
    pub fn spec(&self) -> &ChainSpec {
        &self.inner.spec
    }

    /// True when the chain runs natively (the benchmark floor,
    /// [`super::floor`]) instead of in Lua.
    pub fn runs_natively(&self) -> bool {
        self.inner.floor.is_some()
    }

    /// The limits it runs under.
    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// True when the chain has no stage (encode and decode return their input).
    pub fn is_empty(&self) -> bool {
        self.inner.stages.is_empty()
    }

    /// Runs every stage's `encode`, in order.
    pub fn encode(&self, data: Vec<u8>, ctx: &Ctx) -> Result<Vec<u8>> {
        if self.is_empty() {
            return Ok(data);
        }
        if let Some(floor) = &self.inner.floor {
            return floor.encode(data, ctx);
        }
        with_worker(&self.inner, |w| {
            w.begin(ctx, data.len());
            let r = w.encode(data, ctx);
            w.finish();
            r
        })
    }

    /// Runs every stage's `decode`, in reverse order, falling back to
    /// replicas on damage (see the module docs).
    pub fn decode(&self, data: Vec<u8>, ctx: &Ctx) -> Result<Vec<u8>> {
        Ok(self.decode_report(data, ctx)?.data)
    }

    /// [`Chain::decode`], also telling whether a replica was used.
    pub fn decode_report(&self, data: Vec<u8>, ctx: &Ctx) -> Result<Decoded> {
        if let Some(floor) = &self.inner.floor {
            let data = floor.decode(data, ctx)?;
            return Ok(Decoded {
                data,
                recovered_by: None,
            });
        }
        if self.is_empty() {
            return Ok(Decoded {
                data,
                recovered_by: None,
            });
        }
        with_worker(&self.inner, |w| {
            w.begin(ctx, data.len());
            let r = w.decode(Some(data), ctx);
            w.finish();
            r
        })
    }

    /// Decodes from a replica alone, for when the primary cannot be read:
    /// asks the last stage that defines `recover` (the one nearest the
    /// stored bytes), then decodes the stages before it. FK0905 when no
    /// stage has a replica of `ctx`.
    pub fn recover(&self, ctx: &Ctx) -> Result<Decoded> {
        if self.is_empty() {
            return Err(FilterError::Damaged {
                at: format!("filter chain (recover) on {}", ctx.describe()),
                why: "the chain is empty: no replica of it".into(),
            });
        }
        with_worker(&self.inner, |w| {
            w.begin(ctx, 0);
            let r = w.decode(None, ctx);
            w.finish();
            r
        })
    }

    /// The Lua heap this thread's state for the chain uses, if it has one
    /// (for tests and diagnostics).
    pub fn lua_memory(&self) -> Option<usize> {
        WORKERS.with(|c| {
            c.borrow()
                .iter()
                .find(|(id, _)| *id == self.inner.id)
                .map(|(_, w)| w.lua.used_memory())
        })
    }
}

thread_local! {
    /// Boxed, so that taking one out and putting it back moves a pointer.
    static WORKERS: RefCell<Vec<(u64, Box<Worker>)>> = const { RefCell::new(Vec::new()) };
}

fn put_back(id: u64, worker: Box<Worker>) {
    let evicted = WORKERS.with(|c| {
        let mut ws = c.borrow_mut();
        ws.insert(0, (id, worker));
        let keep = ws.len().min(MAX_STATES_PER_THREAD);
        ws.split_off(keep)
    });
    drop(evicted);
}

/// Runs `f` with this thread's state for the chain (building it if
/// needed). A state whose script failed is dropped, not put back.
fn with_worker<R>(inner: &ChainInner, f: impl FnOnce(&mut Worker) -> Result<R>) -> Result<R> {
    let cached = WORKERS.with(|c| {
        let mut ws = c.borrow_mut();
        let pos = ws.iter().position(|(id, _)| *id == inner.id);
        pos.map(|i| ws.remove(i).1)
    });
    let mut worker = match cached {
        Some(w) => w,
        None => Box::new(Worker::new(inner)?),
    };
    let r = f(&mut worker);
    if r.as_ref().err().is_none_or(|e| !e.poisons_state()) {
        put_back(inner.id, worker);
    }
    r
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abort {
    Budget,
    /// The Lua heap limit, seen by the sandbox's `pcall` (which re-raises
    /// it as a plain string, so the engine would not know it otherwise).
    Heap,
}

/// What the hook and the helpers share about the call in progress.
struct CallState {
    limits: Limits,
    /// The call's context, while `active`. Kept between calls so its
    /// strings are overwritten in place instead of allocated per call.
    ctx: RefCell<Option<Ctx>>,
    active: Cell<bool>,
    /// The call's buffers and their budget ([`bytes::Buffers`]).
    buffers: bytes::Buffers,
    instructions: Cell<u64>,
    abort: Cell<Option<Abort>>,
}

impl CallState {
    fn reset(&self, ctx: Option<&Ctx>, input_len: usize) {
        self.instructions.set(0);
        self.abort.set(None);
        let plain = ctx.map_or(0, |c| usize::try_from(c.size()).unwrap_or(usize::MAX));
        self.buffers.begin(
            self.limits
                .buffers
                .saturating_add(input_len.saturating_add(plain).saturating_mul(8)),
        );
        if let Some(ctx) = ctx {
            assign_ctx(&mut self.ctx.borrow_mut(), ctx);
        }
        self.active.set(ctx.is_some());
    }

    /// True once the call must fail whatever a script's `pcall` says.
    fn aborted(&self) -> bool {
        self.abort.get().is_some() || self.buffers.over_budget()
    }
}

/// `*dst = Some(src.clone())`, reusing `dst`'s string when it has one.
fn assign_ctx(dst: &mut Option<Ctx>, src: &Ctx) {
    match (dst.as_mut(), src) {
        (Some(Ctx::Object { digest, size }), Ctx::Object { digest: d, size: s }) => {
            digest.clone_from(d);
            *size = *s;
        }
        (
            Some(Ctx::Block {
                volume,
                layer,
                block,
                size,
            }),
            Ctx::Block {
                volume: v,
                layer: l,
                block: b,
                size: s,
            },
        ) => {
            volume.clone_from(v);
            (*layer, *block, *size) = (*l, *b, *s);
        }
        _ => *dst = Some(src.clone()),
    }
}

fn call_state(lua: &Lua) -> Rc<CallState> {
    lua.app_data_ref::<Rc<CallState>>()
        .expect("set when the state is built")
        .clone()
}

/// An opaque key.
struct KeyHandle(Key);

impl UserData for KeyHandle {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!("key({})", this.0.id_hex()))
        });
    }
}

fn ext(e: FilterError) -> mlua::Error {
    mlua::Error::external(e)
}

/// Runs `f` on the bytes of a bytes object or a Lua string (for the
/// helpers written with mlua; the hot ones are in [`super::bytes`]).
fn with_bytes<R>(lua: &Lua, v: &Value, f: impl FnOnce(&[u8]) -> R) -> mlua::Result<R> {
    bytes::with_value(&call_state(lua).buffers, v, f)
}

/// Makes a bytes object, charging it to the call's buffer budget.
fn new_bytes(lua: &Lua, data: Vec<u8>) -> mlua::Result<Value> {
    bytes::new_value(&call_state(lua).buffers, data)
}

/// The `ctx` a stage sees: one object per Lua state, passed to every call,
/// whose fields are read from the engine's copy of the call in progress
/// when a script reads them. Read-only: nothing a script does to it
/// reaches a later call, and a stage that does not read `ctx` pays nothing
/// for it (a fresh table per stage call, built by a Lua trampoline and
/// then collected, was about a third of a bare round trip: see
/// docs/benchmarks.md, *Lua filters*).
struct CtxView;

/// `ctx[key]`: the call's field, `nil` for any other key.
fn ctx_field(lua: &Lua, ctx: &Ctx, key: &[u8]) -> mlua::Result<Value> {
    use mlua::IntoLua;
    match (ctx, key) {
        (Ctx::Object { .. }, b"kind") => "object".into_lua(lua),
        (Ctx::Block { .. }, b"kind") => "block".into_lua(lua),
        (_, b"size") => ctx.size().into_lua(lua),
        (Ctx::Object { digest, .. }, b"digest") => digest.as_str().into_lua(lua),
        (Ctx::Block { volume, .. }, b"volume") => volume.as_str().into_lua(lua),
        (Ctx::Block { layer, .. }, b"layer") => layer.into_lua(lua),
        (Ctx::Block { block, .. }, b"block") => block.into_lua(lua),
        _ => Ok(Value::Nil),
    }
}

const CTX_KEYS: &[&str] = &["kind", "size", "digest", "volume", "layer", "block"];

impl UserData for CtxView {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_function(MetaMethod::Index, |lua, (_, key): (Value, Value)| {
            let Value::String(key) = key else {
                return Ok(Value::Nil);
            };
            with_ctx(lua, |ctx| ctx_field(lua, ctx, &key.as_bytes()))?
        });
        methods.add_meta_function(
            MetaMethod::NewIndex,
            |_, _: MultiValue| -> mlua::Result<()> {
                Err(mlua::Error::runtime(
                    "ctx is read-only (keep your own values in a local table)",
                ))
            },
        );
        // `pairs(ctx)`: a table of the call's fields, made when asked.
        methods.add_meta_function(MetaMethod::Pairs, |lua, _: Value| {
            let fields = lua.create_table()?;
            with_ctx(lua, |ctx| -> mlua::Result<()> {
                for key in CTX_KEYS {
                    fields.raw_set(*key, ctx_field(lua, ctx, key.as_bytes())?)?;
                }
                Ok(())
            })??;
            let next: Function = lua.globals().raw_get("next")?;
            Ok((next, fields, Value::Nil))
        });
        methods.add_meta_function(MetaMethod::ToString, |lua, _: Value| {
            with_ctx(lua, |ctx| format!("ctx({})", ctx.describe()))
        });
    }
}

/// Runs `f` on the call's own [`Ctx`] (borrowed, not copied).
fn with_ctx<R>(lua: &Lua, f: impl FnOnce(&Ctx) -> R) -> mlua::Result<R> {
    let st = call_state(lua);
    match &*st.ctx.borrow() {
        Some(ctx) if st.active.get() => Ok(f(ctx)),
        _ => Err(mlua::Error::runtime(
            "this helper works only inside encode, decode or recover",
        )),
    }
}

fn is_memory_error(e: &mlua::Error) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if matches!(e, mlua::Error::MemoryError(_)) {
            return true;
        }
        if let mlua::Error::BadArgument { cause, .. } = e {
            return is_memory_error(cause);
        }
        cur = e.parent();
    }
    false
}

/// The `fk` table: the helpers written with mlua here, and the hot ones
/// (`bytes`, `concat`, `equal`, `crc32c`, `checksum_seal`,
/// `checksum_open`) from [`bytes::install`].
fn fk_table(lua: &Lua, buffers: &bytes::Buffers) -> mlua::Result<Table> {
    let fk = lua.create_table()?;
    for pair in bytes::install(lua, buffers)?.pairs::<Value, Value>() {
        let (k, v) = pair?;
        fk.raw_set(k, v)?;
    }
    fk.set(
        "zstd_compress",
        lua.create_function(|lua, (v, level): (Value, Option<i32>)| {
            let level = level.unwrap_or(3);
            if !(-7..=22).contains(&level) {
                return Err(mlua::Error::runtime(format!(
                    "zstd level {level}: use -7 to 22"
                )));
            }
            let out = with_bytes(lua, &v, |b| native::zstd_compress(b, level))?.map_err(ext)?;
            new_bytes(lua, out)
        })?,
    )?;
    fk.set(
        "zstd_decompress",
        lua.create_function(|lua, v: Value| {
            let max = call_state(lua).buffers.remaining();
            let out = with_bytes(lua, &v, |b| native::zstd_decompress(b, max))?.map_err(ext)?;
            new_bytes(lua, out)
        })?,
    )?;
    fk.set(
        "key",
        lua.create_function(|lua, spec: Table| {
            let file: Option<String> = spec.get("file")?;
            let env: Option<String> = spec.get("env")?;
            let key = match (file, env) {
                (Some(f), _) => Key::from_file(Path::new(&f)),
                (None, Some(e)) => Key::from_env(&e),
                (None, None) => Err(FilterError::Key {
                    at: String::new(),
                    why: "fk.key needs {file = PATH} or {env = NAME}".into(),
                }),
            }
            .map_err(ext)?;
            lua.create_userdata(KeyHandle(key))
        })?,
    )?;
    fk.set(
        "encrypt",
        lua.create_function(|lua, (k, v): (AnyUserData, Value)| {
            let key = k.borrow::<KeyHandle>()?;
            let aad = with_ctx(lua, Ctx::aad)?;
            let out = with_bytes(lua, &v, |b| native::encrypt(&key.0, &aad, b))?.map_err(ext)?;
            new_bytes(lua, out)
        })?,
    )?;
    fk.set(
        "decrypt",
        lua.create_function(|lua, (k, v): (AnyUserData, Value)| {
            let key = k.borrow::<KeyHandle>()?;
            let aad = with_ctx(lua, Ctx::aad)?;
            let out = with_bytes(lua, &v, |b| native::decrypt(&key.0, &aad, b))?.map_err(ext)?;
            new_bytes(lua, out)
        })?,
    )?;
    fk.set(
        "replica_write",
        lua.create_function(|lua, (dir, v): (String, Value)| {
            with_ctx(lua, |ctx| {
                with_bytes(lua, &v, |b| native::replica_write(Path::new(&dir), ctx, b))
            })??
            .map_err(ext)?;
            Ok(v)
        })?,
    )?;
    fk.set(
        "replica_read",
        lua.create_function(|lua, dir: String| {
            let max = call_state(lua).buffers.remaining();
            match with_ctx(lua, |ctx| native::replica_read(Path::new(&dir), ctx, max))?
                .map_err(ext)?
            {
                Some(data) => Ok(Some(new_bytes(lua, data)?)),
                None => Ok(None),
            }
        })?,
    )?;
    fk.set(
        "damaged",
        lua.create_function(|_, why: String| -> mlua::Result<()> {
            Err(ext(FilterError::Damaged {
                at: String::new(),
                why,
            }))
        })?,
    )?;
    fk.set(
        "is_damaged",
        lua.create_function(|_, e: Value| {
            Ok(match e {
                Value::Error(e) => e
                    .downcast_ref::<FilterError>()
                    .is_some_and(FilterError::is_damage),
                _ => false,
            })
        })?,
    )?;
    Ok(fk)
}

/// Run with the full base library before it is taken away. Gets `fk`, the
/// "is this error fatal" test and `print`; returns `new_env(params)`, which
/// makes a script's environment and the function that freezes it.
const PRELUDE: &str = r#"
local fk, fatal, log = ...
local real_pcall, error, setmetatable, tostring, type, rawget, next, real_rawset =
      pcall, error, setmetatable, tostring, type, rawget, next, rawset
local pack, unpack = table.pack, table.unpack
string.dump = nil
getmetatable("").__metatable = false

-- The read-only proxies and frozen environments, which `rawset` must not
-- write either (that would bypass their __newindex, and what it wrote
-- would stay for later calls and other stages).
local protected = setmetatable({}, { __mode = "k" })

local function safe_rawset(t, k, v)
  if protected[t] then error("attempt to modify a read-only table with rawset", 2) end
  return real_rawset(t, k, v)
end

-- pairs() over a hidden table: an iterator that closes over it, never the
-- table itself as the iterator's state (a script would get it from
-- `local _, t = pairs(proxy)` and could write to it).
local function hidden_pairs(t)
  local function iter(_, k) return next(t, k) end
  return function(self) return iter, self, nil end
end

local function readonly(t, name)
  local proxy = setmetatable({}, {
    __index = t,
    __newindex = function() error("attempt to modify the read-only table '" .. name .. "'", 2) end,
    __pairs = hidden_pairs(t),
    __len = function() return #t end,
    __metatable = false,
  })
  protected[proxy] = true
  return proxy
end

local function rethrow(ok, ...)
  if not ok and fatal((...)) then error((...), 0) end
  return ok, ...
end

-- xpcall's handler runs after the stack unwinds: Lua runs a message
-- handler with hooks off when the error came from the instruction hook,
-- so a handler that loops could not be stopped.
local function xrethrow(h, ok, ...)
  if ok then return ok, ... end
  if fatal((...)) then error((...), 0) end
  return false, h((...))
end

-- Finalizers run with hooks off, at any allocation: none from scripts.
local function safe_setmetatable(t, mt)
  if type(mt) == "table" and rawget(mt, "__gc") ~= nil then
    error("__gc metamethods are not allowed in filters", 2)
  end
  return setmetatable(t, mt)
end

local sandbox = {
  assert = assert, error = error, ipairs = ipairs, next = next, pairs = pairs,
  select = select, tonumber = tonumber, tostring = tostring, type = type,
  getmetatable = getmetatable, setmetatable = safe_setmetatable,
  rawequal = rawequal, rawget = rawget, rawlen = rawlen, rawset = safe_rawset,
  _VERSION = _VERSION,
  pcall = function(f, ...) return rethrow(real_pcall(f, ...)) end,
  xpcall = function(f, h, ...) return xrethrow(h, real_pcall(f, ...)) end,
  -- tostring first: it shows a bytes object as bytes(N).
  print = function(...)
    local t = pack(...)
    for i = 1, t.n do t[i] = tostring(t[i]) end
    return log(unpack(t, 1, t.n))
  end,
  string = readonly(string, "string"),
  table = readonly(table, "table"),
  math = readonly(math, "math"),
  utf8 = readonly(utf8, "utf8"),
  fk = readonly(fk, "fk"),
}

return function(params)
  local env = {}
  local mt = { __index = sandbox, __metatable = false }
  env.params = readonly(params, "params")
  env._G = env
  setmetatable(env, mt)
  -- Freezing moves what the top level defined, with the sandbox's names,
  -- into one table behind `env`, which is left empty: every assignment to
  -- a global in a call then reaches __newindex (one to a key `env` still
  -- held would not), and a name is found in one step. Returns that table.
  return env, function()
    local frozen = {}
    for k, v in next, sandbox do frozen[k] = v end
    for k, v in next, env do frozen[k] = v end
    for k in next, frozen do real_rawset(env, k, nil) end
    protected[env] = true
    mt.__index = frozen
    mt.__pairs = hidden_pairs(frozen)
    mt.__newindex = function(_, k)
      error("assignment to global '" .. tostring(k) ..
            "' in a call: globals are read-only once the script is loaded (use a local)", 2)
    end
    return frozen
  end
end
"#;

/// What the real global table loses once the prelude has run (the sandbox
/// never sees it, this is defence in depth).
const STRIPPED_GLOBALS: &[&str] = &[
    "load",
    "loadfile",
    "dofile",
    "loadstring",
    "collectgarbage",
    "require",
    "warn",
    "print",
    "getmetatable",
    "setmetatable",
    "rawset",
    "rawget",
];

/// A stage's functions, ready to call ([`bytes::call_stage`]: registry
/// references).
struct StageFns {
    name: String,
    encode: c_int,
    decode: c_int,
    recover: Option<c_int>,
}

/// One thread's Lua state for one chain.
struct Worker {
    stages: Vec<StageFns>,
    /// The registry reference of the state's one `ctx` object
    /// ([`CtxView`]), passed to every call.
    ctx: c_int,
    st: Rc<CallState>,
    lua: Lua,
}

#[derive(Clone, Copy)]
enum Op {
    Encode,
    Decode,
    Recover,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Encode => "encode",
            Op::Decode => "decode",
            Op::Recover => "recover",
        }
    }
}

fn params_table(lua: &Lua, params: &super::Params) -> mlua::Result<Table> {
    let t = lua.create_table_with_capacity(0, params.len())?;
    for (k, v) in params {
        match v {
            Param::Bool(b) => t.raw_set(k.as_str(), *b)?,
            Param::Int(n) => t.raw_set(k.as_str(), *n)?,
            Param::Float(x) => t.raw_set(k.as_str(), *x)?,
            Param::Str(s) => t.raw_set(k.as_str(), s.as_str())?,
        }
    }
    Ok(t)
}

/// Lua's message without mlua's wrapping and traceback.
fn lua_message(e: &mlua::Error) -> String {
    let mut cur = e;
    while let mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } =
        cur
    {
        cur = cause;
    }
    let text = match cur {
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        other => other.to_string(),
    };
    match text.find("\nstack traceback:") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

impl Worker {
    fn new(inner: &ChainInner) -> Result<Worker> {
        let state_err = |e: mlua::Error| FilterError::Load {
            script: "(sandbox)".into(),
            why: e.to_string(),
        };
        let limits = inner.limits;
        let lua = Lua::new_with(
            StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8,
            LuaOptions::default(),
        )
        .map_err(state_err)?;
        let st = Rc::new(CallState {
            limits,
            ctx: RefCell::new(None),
            active: Cell::new(false),
            buffers: bytes::Buffers::new(limits.buffers),
            instructions: Cell::new(0),
            abort: Cell::new(None),
        });
        // The app data keeps `st` (and so the `Buffers` that the bytes
        // objects' C functions point at) for as long as the state.
        lua.set_app_data(st.clone());

        let fk = fk_table(&lua, &st.buffers).map_err(state_err)?;
        let fatal = lua
            .create_function(|lua, e: Value| {
                let st = call_state(lua);
                if st.aborted() {
                    return Ok(true);
                }
                let heap = match &e {
                    Value::String(s) => s.as_bytes().as_ref() == b"not enough memory",
                    Value::Error(e) => is_memory_error(e),
                    _ => false,
                };
                if heap {
                    st.abort.set(Some(Abort::Heap));
                }
                Ok(heap)
            })
            .map_err(state_err)?;
        let log = lua
            .create_function(|_, args: MultiValue| {
                let parts: Vec<String> = args
                    .iter()
                    .map(|v| v.to_string().unwrap_or_else(|_| v.type_name().to_owned()))
                    .collect();
                tracing::debug!(target: "fukastor::filter", "{}", parts.join("\t"));
                Ok(())
            })
            .map_err(state_err)?;
        let new_env: Function = lua
            .load(PRELUDE)
            .set_name("=fukastor-sandbox")
            .set_mode(ChunkMode::Text)
            .call((fk, fatal, log))
            .map_err(state_err)?;
        let globals = lua.globals();
        for name in STRIPPED_GLOBALS {
            globals.raw_set(*name, Value::Nil).map_err(state_err)?;
        }
        drop(globals);

        let ctx = lua.create_userdata(CtxView).map_err(state_err)?;
        let ctx = bytes::registry_ref(&lua, Value::UserData(ctx)).map_err(state_err)?;

        lua.gc_set_mode(GcMode::Generational(GcGenParams::default()));
        // Limits apply from here on: to loading the scripts, too.
        lua.set_memory_limit(limits.memory).map_err(state_err)?;
        let hook_st = st.clone();
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(HOOK_STEP),
            move |_, _| {
                let n = hook_st.instructions.get() + u64::from(HOOK_STEP);
                hook_st.instructions.set(n);
                if n > hook_st.limits.instructions {
                    hook_st.abort.set(Some(Abort::Budget));
                    return Err(ext(FilterError::Budget {
                        at: String::new(),
                        limit: hook_st.limits.instructions,
                    }));
                }
                Ok(VmState::Continue)
            },
        )
        .map_err(state_err)?;

        let mut worker = Worker {
            stages: Vec::with_capacity(inner.stages.len()),
            ctx,
            st,
            lua,
        };
        for stage in &inner.stages {
            let fns = worker.load_stage(stage, &new_env)?;
            worker.stages.push(fns);
        }
        Ok(worker)
    }

    fn load_stage(&self, stage: &Stage, new_env: &Function) -> Result<StageFns> {
        let name = stage.script.name();
        let place = format!("filter {name} (load)");
        self.st.reset(None, 0);
        let r = (|| -> mlua::Result<Result<StageFns>> {
            let params = params_table(&self.lua, &stage.params)?;
            let (env, freeze): (Table, Function) = new_env.call(params)?;
            self.lua
                .load(stage.script.source())
                .set_name(format!("={name}"))
                .set_mode(ChunkMode::Text)
                .set_environment(env.clone())
                .exec()?;
            let globals: Table = freeze.call(())?;
            let get = |field: &str| -> mlua::Result<Option<Function>> {
                match globals.raw_get::<Value>(field)? {
                    Value::Function(f) => Ok(Some(f)),
                    Value::Nil => Ok(None),
                    other => Err(mlua::Error::runtime(format!(
                        "`{field}` is a {}, not a function",
                        other.type_name()
                    ))),
                }
            };
            let (encode, decode) = match (get("encode")?, get("decode")?) {
                (Some(e), Some(d)) => (e, d),
                _ => {
                    return Ok(Err(FilterError::Load {
                        script: name.to_owned(),
                        why: "the script must define encode(bytes, ctx) and decode(bytes, ctx)"
                            .into(),
                    }));
                }
            };
            let keep = |f: Function| bytes::registry_ref(&self.lua, Value::Function(f));
            let recover = get("recover")?.map(keep).transpose()?;
            Ok(Ok(StageFns {
                name: name.to_owned(),
                encode: keep(encode)?,
                decode: keep(decode)?,
                recover,
            }))
        })();
        let out = match r {
            Ok(inner) => inner,
            Err(e) => Err(match self.classify(&e, &place) {
                FilterError::Script { msg, .. } => FilterError::Load {
                    script: name.to_owned(),
                    why: msg,
                },
                other => other,
            }),
        };
        self.finish();
        out
    }

    fn begin(&self, ctx: &Ctx, input_len: usize) {
        self.st.reset(Some(ctx), input_len);
    }

    /// Frees every buffer the call made: nothing outlives the call.
    fn finish(&self) {
        self.st.buffers.end();
        self.st.active.set(false);
    }

    fn classify(&self, e: &mlua::Error, place: &str) -> FilterError {
        if self.st.abort.get() == Some(Abort::Budget) {
            return FilterError::Budget {
                at: place.to_owned(),
                limit: self.st.limits.instructions,
            };
        }
        if let Some(fe) = e.downcast_ref::<FilterError>() {
            return fe.clone().located(place);
        }
        if self.st.buffers.over_budget() {
            return FilterError::Memory {
                at: place.to_owned(),
                what: format!(
                    "helpers allocated more than the call's buffer budget of {} bytes",
                    self.st.buffers.budget()
                ),
            };
        }
        if is_memory_error(e) || self.st.abort.get() == Some(Abort::Heap) {
            return FilterError::Memory {
                at: place.to_owned(),
                what: format!("the Lua heap limit of {} bytes", self.st.limits.memory),
            };
        }
        FilterError::Script {
            at: place.to_owned(),
            msg: lua_message(e),
        }
    }

    /// Takes the result out: the buffer itself when nothing else shares
    /// it. The call's other buffers are freed first, so a result that is a
    /// view of one of them (`checksum_open`) is trimmed in place rather
    /// than copied.
    fn output(&self, slot: usize) -> Vec<u8> {
        self.st.buffers.take_vec(slot)
    }

    /// Calls one stage's `encode`/`decode` (with the bytes in slot
    /// `input`) or `recover` (no input). What it returns: a slot, or
    /// `None` when `recover` found nothing (`nil`).
    fn call(&self, k: usize, op: Op, input: Option<usize>, ctx: &Ctx) -> Result<Option<usize>> {
        let stage = &self.stages[k];
        let place = || {
            format!(
                "filter {} ({}) on {}",
                stage.name,
                op.name(),
                ctx.describe()
            )
        };
        let f = match op {
            Op::Encode => stage.encode,
            Op::Decode => stage.decode,
            Op::Recover => match stage.recover {
                Some(f) => f,
                None => return Ok(None),
            },
        };
        let out = bytes::call_stage(&self.st.buffers, f, self.ctx, input)
            .map_err(|e| self.classify(&e, &place()))?;
        let got = match out {
            Returned::Slot(slot) => {
                // The stage's input, unless returned, is freed now (peak
                // memory stays at about two buffers whatever the chain's
                // length).
                if let Some(i) = input
                    && i != slot
                {
                    self.st.buffers.free(i);
                }
                return Ok(Some(slot));
            }
            Returned::Nil if matches!(op, Op::Recover) => return Ok(None),
            Returned::Nil => "nil",
            Returned::Bad(got) => got,
        };
        Err(FilterError::BadReturn {
            at: place(),
            got: got.to_owned(),
        })
    }

    /// [`Worker::call`] of `encode` or `decode` (whose `nil` is already a
    /// bad return there, so `None` cannot come back).
    fn step(&self, k: usize, op: Op, input: usize, ctx: &Ctx) -> Result<usize> {
        self.call(k, op, Some(input), ctx)?
            .ok_or_else(|| FilterError::BadReturn {
                at: format!("filter {} ({})", self.stages[k].name, op.name()),
                got: "nil".into(),
            })
    }

    fn encode(&self, data: Vec<u8>, ctx: &Ctx) -> Result<Vec<u8>> {
        let mut cur = self.st.buffers.insert(data);
        for k in 0..self.stages.len() {
            cur = self.step(k, Op::Encode, cur, ctx)?;
        }
        Ok(self.output(cur))
    }

    /// Decodes `data` (or, when `None`, starts from the outermost replica).
    fn decode(&self, data: Option<Vec<u8>>, ctx: &Ctx) -> Result<Decoded> {
        let n = self.stages.len();
        // Which stages' `recover` ran: only needed (and allocated) on damage.
        let mut tried = Vec::new();
        let mut recovered_by = None;
        // `next` is the number of stages still to decode: stage next-1 is next.
        let (mut cur, mut next) = match data {
            Some(d) => (self.st.buffers.insert(d), n),
            None => {
                tried.resize(n, false);
                let mut found = None;
                for j in (0..n).rev() {
                    if self.stages[j].recover.is_none() {
                        continue;
                    }
                    tried[j] = true;
                    if let Some(v) = self.call(j, Op::Recover, None, ctx)? {
                        found = Some((v, j));
                        break;
                    }
                }
                let Some((v, j)) = found else {
                    return Err(FilterError::Damaged {
                        at: format!("filter chain (recover) on {}", ctx.describe()),
                        why: "no replica of it".into(),
                    });
                };
                recovered_by = Some(self.stages[j].name.clone());
                (v, j)
            }
        };
        let mut first_damage: Option<FilterError> = None;
        while next > 0 {
            let k = next - 1;
            match self.step(k, Op::Decode, cur, ctx) {
                Ok(v) => {
                    cur = v;
                    next = k;
                }
                Err(e) if e.is_damage() || matches!(e, FilterError::WrongKey { .. }) => {
                    let first = first_damage.get_or_insert(e);
                    tried.resize(n, false);
                    let mut found = None;
                    let mut notes = Vec::new();
                    for (j, done) in tried.iter_mut().enumerate().skip(k + 1) {
                        if *done || self.stages[j].recover.is_none() {
                            continue;
                        }
                        *done = true;
                        match self.call(j, Op::Recover, None, ctx) {
                            Ok(None) => {
                                notes.push(format!("no replica in {}", self.stages[j].name))
                            }
                            Ok(Some(v)) => {
                                found = Some((v, j));
                                break;
                            }
                            // An unreadable replica: say so with the damage.
                            Err(e) if !e.poisons_state() => notes.push(e.to_string()),
                            Err(e) => return Err(e),
                        }
                    }
                    match found {
                        Some((v, j)) => {
                            tracing::warn!(
                                "{}; reading the replica from filter {}",
                                first,
                                self.stages[j].name
                            );
                            recovered_by = Some(self.stages[j].name.clone());
                            cur = v;
                            next = j;
                        }
                        None => {
                            let mut e = first_damage.take().expect("set above");
                            if let FilterError::Damaged { why, .. } = &mut e {
                                if recovered_by.is_some() {
                                    why.push_str(" (its replica is damaged too)");
                                }
                                for note in notes {
                                    why.push_str(&format!("; {note}"));
                                }
                            }
                            return Err(e);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Decoded {
            data: self.output(cur),
            recovered_by,
        })
    }
}
