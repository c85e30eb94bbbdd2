//! Bytes objects: the buffers scripts pass around, and their Lua side,
//! written on Lua's C API. This module holds all of the filter engine's
//! `unsafe` code.
//!
//! Why the C API: a bytes object made through mlua's userdata costs about
//! 2,500 instructions over its life (made, handed over, taken back, swept
//! with a finalizer), and a checksum round trip makes four, which alone
//! was most of the Lua overhead over the native helper (docs/benchmarks.md,
//! *Lua filters*). Here a bytes object is a light userdata: a value, not
//! an allocation, so making one costs Lua nothing and the collector never
//! sees it. The hot helpers (`fk.bytes`, `fk.concat`, `fk.equal`,
//! `fk.crc32c`, `fk.checksum_seal`, `fk.checksum_open`, the bytes
//! methods) are plain C functions, and a stage is called with one
//! `lua_pcall` from Rust ([`call_stage`]).
//!
//! # How a bytes object is kept
//!
//! The buffers of a call live in the call's slab ([`Buffers`]), owned by
//! Rust. A bytes object is a light userdata whose value is a [`Handle`]
//! (the call's number and a slot of the slab, packed; never dereferenced).
//! When the call ends, the engine empties the slab: every handle of that
//! call then names nothing (its call number is old), so a bytes object a
//! script kept is dead ("a bytes object from an earlier call").
//!
//! The call number has 40 bits and wraps after 2⁴⁰ calls of one state
//! (about 12 days at a million calls a second). A handle kept that long
//! may then name a slot of the call in progress: it shows that call's
//! bytes, which the script is being given anyway, never an earlier
//! call's. The slot has 24 bits: a call that tries to make more objects
//! fails (FK0902).
//!
//! All light userdata of a Lua state share one metatable, set by
//! [`install`]: nothing else in the sandbox makes light userdata, and a
//! value that is not a handle of the call in progress names no buffer
//! ([`Buffers::get`] refuses it). Lua compares light userdata by value
//! and never calls `__eq` for them, so `==` on bytes objects is identity
//! (as for tables) and `fk.equal` compares contents.
//!
//! # The rules every function here keeps
//!
//! * A C function runs only while its Lua state lives. Its first upvalue
//!   points at the state's [`Buffers`], which the engine keeps (inside an
//!   `Rc` in the state's app data) for as long as the state.
//! * Lua reports errors by `longjmp`. A call that may raise (an allocation,
//!   raising itself, calling Lua) is made only when the Rust frames it would
//!   skip hold nothing to drop: a function first does its work, moves the
//!   result into the slab (or the error into [`Buffers`]'s pending slot)
//!   and only then touches Lua again ([`Push`] is `Copy`).
//! * Rust panics never cross into Lua: each body runs under `catch_unwind`.
//! * Errors are raised as mlua errors, through an mlua function that
//!   returns the pending error, so a `FilterError` stays one for
//!   `fk.is_damaged` and for the engine.

// The crate denies `unsafe`; this module is where the filter engine's is
// kept (see the rules above).
#![allow(unsafe_code)]

use std::cell::{Cell, Ref, RefCell};
use std::ffi::{c_char, c_int, c_void};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

use mlua::ffi::{self, lua_State};
use mlua::{Lua, Table, Value};

use super::FilterError;
use super::native;

/// A buffer, or a read-only view (`start..end`) of a shared one. Bytes
/// objects are never modified, so a view cannot be told apart from a copy,
/// and a helper whose result is part of its input (`checksum_open`,
/// `b:sub`) returns a view instead of a copy.
pub(super) struct Bytes {
    buf: Rc<Vec<u8>>,
    start: usize,
    end: usize,
}

impl Bytes {
    fn new(data: Vec<u8>) -> Bytes {
        Bytes {
            end: data.len(),
            buf: Rc::new(data),
            start: 0,
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn len(&self) -> usize {
        self.end - self.start
    }

    /// A view of `range` (relative to this view) sharing the buffer.
    fn view(&self, range: std::ops::Range<usize>) -> Bytes {
        debug_assert!(range.start <= range.end && range.end <= self.len());
        Bytes {
            buf: self.buf.clone(),
            start: self.start + range.start,
            end: self.start + range.end,
        }
    }

    /// `fk.checksum_seal` without copying: when this object is the only
    /// one using its buffer and covers all of it, the trailer is appended
    /// to the buffer and the sealed bytes are a view of it. This object
    /// still shows the bytes it showed (its view ends before the trailer),
    /// so nothing a script can do tells this from a copy. `None` when the
    /// buffer is shared or only partly viewed (then the caller copies).
    fn seal_in_place(&mut self) -> Option<Bytes> {
        let (start, end) = (self.start, self.end);
        let buf = Rc::get_mut(&mut self.buf)?;
        if start != 0 || end != buf.len() {
            return None;
        }
        *buf = native::checksum_append(std::mem::take(buf));
        Some(Bytes {
            end: buf.len(),
            buf: self.buf.clone(),
            start: 0,
        })
    }

    /// The bytes as a vector: the buffer itself when nothing else shares
    /// it and the view is most of it (trimmed in place), a copy otherwise
    /// (so a small view does not keep a large allocation). The emptied
    /// `Rc` is left in `self` for [`Buffers::recycle`].
    fn take_vec(&mut self) -> Vec<u8> {
        let (start, end) = (self.start, self.end);
        match Rc::get_mut(&mut self.buf) {
            Some(v) if end - start >= v.len() / 2 => {
                let mut v = std::mem::take(v);
                v.truncate(end);
                if start > 0 {
                    v.drain(..start);
                }
                v
            }
            _ => self.as_slice().to_vec(),
        }
    }
}

/// What a bytes object is: the call that made it and its slot in that
/// call's slab, packed into a light userdata's pointer-sized value (never
/// dereferenced; see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Handle {
    /// The call that made it ([`Buffers::begin`] counts calls, in
    /// [`CALL_BITS`] bits, from 1).
    call: u64,
    /// Its slot in that call's slab (below [`MAX_SLOTS`]).
    slot: u64,
}

/// Bits of a handle's slot, and so the most objects one call can make.
const SLOT_BITS: u32 = 24;
const MAX_SLOTS: usize = 1 << SLOT_BITS;
/// Bits of a handle's call number: it wraps after 2⁴⁰ calls of one state.
const CALL_BITS: u32 = 64 - SLOT_BITS;
// A handle is packed into a pointer.
const _: () = assert!(usize::BITS == 64);

impl Handle {
    /// The light userdata value naming this handle.
    fn to_ptr(self) -> *mut c_void {
        debug_assert!(self.slot < MAX_SLOTS as u64 && self.call < 1 << CALL_BITS);
        std::ptr::without_provenance_mut((self.call << SLOT_BITS | self.slot) as usize)
    }

    fn from_ptr(p: *mut c_void) -> Handle {
        let v = p.addr() as u64;
        Handle {
            call: v >> SLOT_BITS,
            slot: v & (MAX_SLOTS as u64 - 1),
        }
    }
}

/// What each bytes object a helper makes costs the call's buffer budget
/// besides its bytes: its slot, its `Rc` and its share of the slab's
/// growth. Without it, a loop making
/// empty objects (`for i = 1, 1e7 do fk.bytes('') end`) would grow the
/// slab without limit.
const OBJECT_COST: usize = 128;

/// Slabs that grew past this many slots are shrunk when the call ends.
const SLAB_KEEP: usize = 256;
/// Emptied `Rc`s kept for reuse.
const SPARE_KEEP: usize = 8;

fn runtime(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::runtime(msg.into())
}

fn ext(e: FilterError) -> mlua::Error {
    mlua::Error::external(e)
}

const STALE: &str = "a bytes object from an earlier call (buffers live for one call)";

/// The buffers of one Lua state's call in progress, and what the Lua side
/// of bytes objects needs to find them.
pub(super) struct Buffers {
    /// The call in progress (or the last one): a handle of another call is dead.
    call: Cell<u64>,
    slots: RefCell<Vec<Option<Bytes>>>,
    used: Cell<usize>,
    budget: Cell<usize>,
    /// Set when a helper went over the budget (FK0902, and it poisons the
    /// call: the sandbox's `pcall` does not catch it).
    over_budget: Cell<bool>,
    /// The error a C function is about to raise (taken by the thrower).
    pending: Rc<RefCell<Option<mlua::Error>>>,
    /// The registry reference of the thrower.
    thrower_ref: Cell<c_int>,
    /// The state's main thread, where stages are called.
    main: Cell<*mut lua_State>,
    /// The registry reference of the catcher, and what it caught.
    catcher_ref: Cell<c_int>,
    caught: Rc<RefCell<Option<Value>>>,
    /// Emptied `Rc`s of earlier buffers, reused for new ones (an input
    /// per call would otherwise allocate one).
    spare: RefCell<Vec<Rc<Vec<u8>>>>,
}

impl Buffers {
    pub(super) fn new(budget: usize) -> Buffers {
        Buffers {
            call: Cell::new(0),
            slots: RefCell::new(Vec::new()),
            used: Cell::new(0),
            budget: Cell::new(budget),
            over_budget: Cell::new(false),
            pending: Rc::new(RefCell::new(None)),
            thrower_ref: Cell::new(ffi::LUA_NOREF),
            main: Cell::new(std::ptr::null_mut()),
            spare: RefCell::new(Vec::new()),
            catcher_ref: Cell::new(ffi::LUA_NOREF),
            caught: Rc::new(RefCell::new(None)),
        }
    }

    /// Starts a call: earlier handles die, the budget is `budget`.
    pub(super) fn begin(&self, budget: usize) {
        self.end();
        let next = self.call.get() + 1;
        self.call.set(if next >> CALL_BITS == 0 { next } else { 1 });
        self.used.set(0);
        self.budget.set(budget);
        self.over_budget.set(false);
    }

    /// Frees every buffer of the call (dropping one runs no Lua).
    pub(super) fn end(&self) {
        let mut slots = self.slots.borrow_mut();
        while let Some(slot) = slots.pop() {
            if let Some(b) = slot {
                self.recycle(b);
            }
        }
        if slots.capacity() > SLAB_KEEP {
            slots.shrink_to(SLAB_KEEP);
        }
    }

    /// Bytes owning `data`, in a spare `Rc` when there is one.
    fn wrap(&self, data: Vec<u8>) -> Bytes {
        let spare = self.spare.try_borrow_mut().ok().and_then(|mut s| s.pop());
        match spare {
            Some(mut rc) => match Rc::get_mut(&mut rc) {
                Some(v) => {
                    let end = data.len();
                    *v = data;
                    Bytes {
                        buf: rc,
                        start: 0,
                        end,
                    }
                }
                None => Bytes::new(data),
            },
            None => Bytes::new(data),
        }
    }

    /// Drops `b`; when it held the last reference to its buffer, frees
    /// the buffer and keeps the emptied `Rc` for [`Buffers::wrap`].
    fn recycle(&self, mut b: Bytes) {
        if let Some(v) = Rc::get_mut(&mut b.buf) {
            drop(std::mem::take(v));
            if let Ok(mut spare) = self.spare.try_borrow_mut()
                && spare.len() < SPARE_KEEP
            {
                spare.push(b.buf);
            }
        }
    }

    /// The bytes of `slot` as a vector, once the call's other buffers are
    /// freed (so a result that is a view of one of them, as
    /// `checksum_open`'s, is trimmed in place rather than copied). Ends
    /// the call's buffers.
    pub(super) fn take_vec(&self, slot: usize) -> Vec<u8> {
        let taken = self.take(slot);
        debug_assert!(taken.is_some(), "the result's slot is live");
        self.end();
        match taken {
            Some(mut b) => {
                let v = b.take_vec();
                self.recycle(b);
                v
            }
            None => Vec::new(),
        }
    }

    pub(super) fn budget(&self) -> usize {
        self.budget.get()
    }

    pub(super) fn over_budget(&self) -> bool {
        self.over_budget.get()
    }

    /// What helpers may still allocate in this call.
    pub(super) fn remaining(&self) -> usize {
        self.budget.get().saturating_sub(self.used.get())
    }

    /// Checks that an object of `len` bytes fits in what is left of the
    /// budget (before a helper builds it, when its size is known).
    fn fits(&self, len: usize) -> mlua::Result<()> {
        if len.saturating_add(OBJECT_COST) > self.remaining() {
            self.over_budget.set(true);
            return Err(ext(FilterError::Memory {
                at: String::new(),
                what: format!(
                    "helpers allocated more than the call's buffer budget of {} bytes",
                    self.budget.get()
                ),
            }));
        }
        Ok(())
    }

    /// Puts `b` in the slab. `charge`: helpers' results count against the
    /// budget (a view like a copy); the engine's own input does not.
    fn store(&self, b: Bytes, charge: bool) -> mlua::Result<Handle> {
        if charge {
            self.fits(b.len())?;
            self.used
                .set(self.used.get().saturating_add(b.len()) + OBJECT_COST);
        }
        let mut slots = self
            .slots
            .try_borrow_mut()
            .map_err(|_| runtime("bytes objects are busy"))?;
        let h = self.handle(slots.len())?;
        slots.push(Some(b));
        Ok(h)
    }

    /// The handle of `slot` in the call in progress: the one place a slot
    /// becomes a bytes object, so the one place the slot's 24 bits are
    /// checked (FK0902 past them; it poisons the call like the budget).
    fn handle(&self, slot: usize) -> mlua::Result<Handle> {
        if slot >= MAX_SLOTS {
            self.over_budget.set(true);
            return Err(ext(FilterError::Memory {
                at: String::new(),
                what: format!("more than {MAX_SLOTS} bytes objects in one call"),
            }));
        }
        Ok(Handle {
            call: self.call.get(),
            slot: slot as u64,
        })
    }

    /// The engine's input to a call: a slot (not charged).
    pub(super) fn insert(&self, data: Vec<u8>) -> usize {
        let mut slots = self.slots.borrow_mut();
        slots.push(Some(self.wrap(data)));
        slots.len() - 1
    }

    /// Takes a slot's bytes out, ending the bytes object that showed them.
    pub(super) fn take(&self, slot: usize) -> Option<Bytes> {
        self.slots.borrow_mut().get_mut(slot).and_then(Option::take)
    }

    /// Frees a slot now (a stage's input once the stage returned).
    pub(super) fn free(&self, slot: usize) {
        if let Some(b) = self.take(slot) {
            self.recycle(b);
        }
    }

    /// The bytes a live handle names.
    fn get(&self, h: Handle) -> mlua::Result<Ref<'_, Bytes>> {
        if h.call != self.call.get() {
            return Err(runtime(STALE));
        }
        let slots = self
            .slots
            .try_borrow()
            .map_err(|_| runtime("bytes objects are busy"))?;
        Ref::filter_map(slots, |s| {
            usize::try_from(h.slot)
                .ok()
                .and_then(|i| s.get(i))
                .and_then(Option::as_ref)
        })
        .map_err(|_| runtime(STALE))
    }

    fn with_src<R>(&self, s: Src, f: impl FnOnce(&[u8]) -> R) -> mlua::Result<R> {
        match s {
            Src::Obj(h) => Ok(f(self.get(h)?.as_slice())),
            // SAFETY: a string argument stays on the Lua stack (so alive
            // and unmoved) for the whole C function that reads it.
            Src::Str(p, n) => Ok(f(unsafe { std::slice::from_raw_parts(p, n) })),
        }
    }

    /// `fk.checksum_seal` of a bytes object, in place when it can be.
    fn seal(&self, h: Handle) -> mlua::Result<Bytes> {
        if h.call != self.call.get() {
            return Err(runtime(STALE));
        }
        let sealed = {
            let mut slots = self
                .slots
                .try_borrow_mut()
                .map_err(|_| runtime("bytes objects are busy"))?;
            let b = usize::try_from(h.slot)
                .ok()
                .and_then(|i| slots.get_mut(i))
                .and_then(Option::as_mut)
                .ok_or_else(|| runtime(STALE))?;
            b.seal_in_place()
        };
        match sealed {
            Some(s) => Ok(s),
            None => Ok(self.wrap(native::checksum_seal(self.get(h)?.as_slice()))),
        }
    }
}

/// An argument that is a bytes object or a Lua string.
#[derive(Clone, Copy)]
enum Src {
    Obj(Handle),
    Str(*const u8, usize),
}

/// What a C function pushes as its one result. `Copy`: nothing in it
/// needs dropping when pushing it raises a memory error.
#[derive(Clone, Copy)]
enum Push {
    Obj(Handle),
    Int(i64),
    Bool(bool),
    /// Bytes of a live buffer or of an argument string, copied by Lua.
    Str(*const u8, usize),
    /// A short text made here.
    Text([u8; 40], usize),
}

fn type_name(t: c_int) -> &'static str {
    match t {
        ffi::LUA_TNONE => "no value",
        ffi::LUA_TNIL => "nil",
        ffi::LUA_TBOOLEAN => "boolean",
        ffi::LUA_TLIGHTUSERDATA | ffi::LUA_TUSERDATA => "userdata",
        ffi::LUA_TNUMBER => "number",
        ffi::LUA_TSTRING => "string",
        ffi::LUA_TTABLE => "table",
        ffi::LUA_TFUNCTION => "function",
        ffi::LUA_TTHREAD => "thread",
        _ => "value",
    }
}

/// The handle of the value at `idx` if it is a bytes object: a light
/// userdata (only this module makes them in a filter's state; a value that
/// names no live buffer is refused by [`Buffers::get`]). Raises nothing.
unsafe fn handle_at(l: *mut lua_State, idx: c_int) -> Option<Handle> {
    // SAFETY (both calls): `l` is a live state and `idx` a valid index;
    // neither call raises.
    unsafe {
        (ffi::lua_type(l, idx) == ffi::LUA_TLIGHTUSERDATA)
            .then(|| Handle::from_ptr(ffi::lua_touserdata(l, idx)))
    }
}

/// Pushes the bytes object of `h`. Raises nothing (a light userdata is
/// not allocated); needs one free stack slot.
unsafe fn push_handle(l: *mut lua_State, h: Handle) {
    // SAFETY: `l` is live with a free stack slot.
    unsafe { ffi::lua_pushlightuserdata(l, h.to_ptr()) }
}

/// The `Buffers` a C function's first upvalue points at.
unsafe fn buffers<'a>(l: *mut lua_State) -> &'a Buffers {
    // SAFETY: every C function here is made by `install` with this
    // upvalue, and the `Buffers` outlives the state (module docs).
    unsafe { &*(ffi::lua_touserdata(l, ffi::lua_upvalueindex(1)) as *const Buffers) }
}

/// Raises `b.pending` as an mlua error, by calling the thrower.
unsafe fn raise(l: *mut lua_State, b: &Buffers) -> ! {
    // SAFETY: `l` is live inside a C function (LUA_MINSTACK free slots);
    // the thrower always raises; the fallback raises nil.
    unsafe {
        ffi::lua_rawgeti(
            l,
            ffi::LUA_REGISTRYINDEX,
            ffi::lua_Integer::from(b.thrower_ref.get()),
        );
        ffi::lua_callk(l, 0, 0, 0, None);
        ffi::lua_pushnil(l);
        ffi::lua_error(l)
    }
}

/// Runs a C function's `body` (no raising Lua calls in it), then pushes
/// its result or raises its error.
unsafe fn run(l: *mut lua_State, body: impl FnOnce(&Buffers) -> mlua::Result<Push>) -> c_int {
    // SAFETY: see the module docs; `body`'s values are dropped before
    // anything here may raise.
    unsafe {
        let b = buffers(l);
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| body(b)))
            .unwrap_or_else(|_| Err(runtime("internal error in a bytes helper")));
        let p = match r {
            Ok(p) => p,
            Err(e) => {
                *b.pending.borrow_mut() = Some(e);
                raise(l, b)
            }
        };
        match p {
            Push::Obj(h) => push_handle(l, h),
            Push::Int(n) => ffi::lua_pushinteger(l, n),
            Push::Bool(x) => ffi::lua_pushboolean(l, c_int::from(x)),
            Push::Str(p, n) => {
                ffi::lua_pushlstring(l, p as *const c_char, n);
            }
            Push::Text(buf, n) => {
                ffi::lua_pushlstring(l, buf.as_ptr() as *const c_char, n);
            }
        }
        1
    }
}

/// Argument `idx` as bytes or a string.
unsafe fn src(l: *mut lua_State, idx: c_int) -> mlua::Result<Src> {
    // SAFETY: reading arguments of a live C function call; nothing raises
    // (`lua_tolstring` is only called on strings, so converts nothing).
    unsafe {
        match ffi::lua_type(l, idx) {
            ffi::LUA_TSTRING => {
                let mut n = 0usize;
                let p = ffi::lua_tolstring(l, idx, &mut n);
                Ok(Src::Str(p as *const u8, n))
            }
            ffi::LUA_TLIGHTUSERDATA => Ok(Src::Obj(Handle::from_ptr(ffi::lua_touserdata(l, idx)))),
            t => Err(runtime(format!(
                "expected bytes or a string, got {}",
                type_name(t)
            ))),
        }
    }
}

/// Argument `idx` as the bytes object a method is called on.
unsafe fn this(l: *mut lua_State) -> mlua::Result<Handle> {
    // SAFETY: as `src`.
    unsafe {
        handle_at(l, 1)
            .ok_or_else(|| runtime("a bytes method called on something else (use b:method())"))
    }
}

/// An optional integer argument.
unsafe fn opt_int(l: *mut lua_State, idx: c_int) -> mlua::Result<Option<i64>> {
    // SAFETY: reading an argument; `lua_tointegerx` raises nothing.
    unsafe {
        match ffi::lua_type(l, idx) {
            ffi::LUA_TNONE | ffi::LUA_TNIL => Ok(None),
            ffi::LUA_TNUMBER => {
                let mut ok = 0;
                let n = ffi::lua_tointegerx(l, idx, &mut ok);
                if ok == 0 {
                    Err(runtime("number has no integer representation"))
                } else {
                    Ok(Some(n))
                }
            }
            t => Err(runtime(format!(
                "expected an integer, got {}",
                type_name(t)
            ))),
        }
    }
}

/// Lua-style `i, j` (1-based, negative from the end) to a byte range.
fn lua_range(len: usize, i: Option<i64>, j: Option<i64>) -> std::ops::Range<usize> {
    let n = i64::try_from(len).unwrap_or(i64::MAX);
    let mut i = i.unwrap_or(1);
    let mut j = j.unwrap_or(-1);
    if i < 0 {
        i = (n + i + 1).max(1);
    } else if i == 0 {
        i = 1;
    }
    if j < 0 {
        j = n + j + 1;
    } else if j > n {
        j = n;
    }
    if i > j {
        0..0
    } else {
        usize::try_from(i - 1).unwrap_or(0)..usize::try_from(j).unwrap_or(0)
    }
}

fn text(args: std::fmt::Arguments<'_>) -> Push {
    use std::io::Write;
    let mut buf = [0u8; 40];
    let mut w = &mut buf[..];
    let _ = w.write_fmt(args);
    let n = 40 - w.len();
    Push::Text(buf, n)
}

// The C functions. Each is `unsafe extern "C-unwind"` because Lua calls
// it (and it may raise through `longjmp`); see the module docs.

unsafe extern "C-unwind" fn b_len(l: *mut lua_State) -> c_int {
    unsafe {
        run(l, |b| {
            let h = this(l)?;
            Ok(Push::Int(b.get(h)?.len() as i64))
        })
    }
}

unsafe extern "C-unwind" fn b_str(l: *mut lua_State) -> c_int {
    unsafe {
        run(l, |b| {
            let h = this(l)?;
            let (i, j) = (opt_int(l, 2)?, opt_int(l, 3)?);
            let bytes = b.get(h)?;
            let s = &bytes.as_slice()[lua_range(bytes.len(), i, j)];
            // The buffer stays in the slab, unmoved, until the call ends.
            Ok(Push::Str(s.as_ptr(), s.len()))
        })
    }
}

unsafe extern "C-unwind" fn b_sub(l: *mut lua_State) -> c_int {
    unsafe {
        run(l, |b| {
            let h = this(l)?;
            let (i, j) = (opt_int(l, 2)?, opt_int(l, 3)?);
            let view = {
                let bytes = b.get(h)?;
                bytes.view(lua_range(bytes.len(), i, j))
            };
            Ok(Push::Obj(b.store(view, true)?))
        })
    }
}

unsafe extern "C-unwind" fn b_tostring(l: *mut lua_State) -> c_int {
    unsafe {
        run(l, |b| {
            let h = this(l)?;
            Ok(text(format_args!("bytes({})", b.get(h)?.len())))
        })
    }
}

unsafe extern "C-unwind" fn fk_equal(l: *mut lua_State) -> c_int {
    unsafe {
        run(l, |b| {
            let (x, y) = (src(l, 1)?, src(l, 2)?);
            let same = b.with_src(x, |x| b.with_src(y, |y| x == y))??;
            Ok(Push::Bool(same))
        })
    }
}

unsafe extern "C-unwind" fn b_concat(l: *mut lua_State) -> c_int {
    unsafe {
        run(l, |b| {
            let (x, y) = (src(l, 1)?, src(l, 2)?);
            b.fits(b.with_src(x, <[u8]>::len)? + b.with_src(y, <[u8]>::len)?)?;
            let mut out = b.with_src(x, <[u8]>::to_vec)?;
            b.with_src(y, |s| out.extend_from_slice(s))?;
            Ok(Push::Obj(b.store(b.wrap(out), true)?))
        })
    }
}

unsafe extern "C-unwind" fn fk_bytes(l: *mut lua_State) -> c_int {
    unsafe {
        run(l, |b| {
            let made = match src(l, 1)? {
                // Bytes never change: the whole view is the copy.
                Src::Obj(h) => {
                    let bytes = b.get(h)?;
                    bytes.view(0..bytes.len())
                }
                s => b.wrap(b.with_src(s, <[u8]>::to_vec)?),
            };
            Ok(Push::Obj(b.store(made, true)?))
        })
    }
}

unsafe extern "C-unwind" fn fk_concat(l: *mut lua_State) -> c_int {
    unsafe {
        run(l, |b| {
            // The size first: many arguments naming one large string must
            // fail on the budget, not on a huge allocation.
            let n = ffi::lua_gettop(l);
            let mut total = 0usize;
            for i in 1..=n {
                total = total.saturating_add(b.with_src(src(l, i)?, <[u8]>::len)?);
            }
            b.fits(total)?;
            let mut out = Vec::with_capacity(total);
            for i in 1..=n {
                b.with_src(src(l, i)?, |s| out.extend_from_slice(s))?;
            }
            Ok(Push::Obj(b.store(b.wrap(out), true)?))
        })
    }
}

unsafe extern "C-unwind" fn fk_crc32c(l: *mut lua_State) -> c_int {
    unsafe {
        run(l, |b| {
            let crc = b.with_src(src(l, 1)?, native::crc32c)?;
            Ok(Push::Int(i64::from(crc)))
        })
    }
}

unsafe extern "C-unwind" fn fk_checksum_seal(l: *mut lua_State) -> c_int {
    unsafe {
        run(l, |b| {
            let sealed = match src(l, 1)? {
                Src::Obj(h) => b.seal(h)?,
                s => b.wrap(b.with_src(s, native::checksum_seal)?),
            };
            Ok(Push::Obj(b.store(sealed, true)?))
        })
    }
}

unsafe extern "C-unwind" fn fk_checksum_open(l: *mut lua_State) -> c_int {
    unsafe {
        run(l, |b| {
            let body = match src(l, 1)? {
                // The body of a bytes object is a view of it: no copy.
                Src::Obj(h) => {
                    let bytes = b.get(h)?;
                    let n = native::checksum_verify(bytes.as_slice())
                        .map_err(ext)?
                        .len();
                    bytes.view(0..n)
                }
                s => b.wrap(b.with_src(s, native::checksum_open)?.map_err(ext)?),
            };
            Ok(Push::Obj(b.store(body, true)?))
        })
    }
}

type CFn = unsafe extern "C-unwind" fn(*mut lua_State) -> c_int;

const METHODS: &[(&std::ffi::CStr, CFn)] = &[(c"len", b_len), (c"str", b_str), (c"sub", b_sub)];
const META: &[(&std::ffi::CStr, CFn)] = &[
    (c"__len", b_len),
    (c"__tostring", b_tostring),
    (c"__concat", b_concat),
];
const HELPERS: &[(&std::ffi::CStr, CFn)] = &[
    (c"bytes", fk_bytes),
    (c"equal", fk_equal),
    (c"concat", fk_concat),
    (c"crc32c", fk_crc32c),
    (c"checksum_seal", fk_checksum_seal),
    (c"checksum_open", fk_checksum_open),
];

/// Sets up bytes objects in `lua` for `b` (which must outlive `lua`):
/// the metatable, the thrower, and the helpers written here, returned as
/// a table to merge into `fk`.
pub(super) fn install(lua: &Lua, b: &Buffers) -> mlua::Result<Table> {
    let pending = b.pending.clone();
    let thrower = lua.create_function(move |_, ()| -> mlua::Result<()> {
        Err(pending
            .borrow_mut()
            .take()
            .unwrap_or_else(|| runtime("internal error: nothing to raise")))
    })?;
    b.thrower_ref
        .set(registry_ref(lua, Value::Function(thrower))?);
    let caught = b.caught.clone();
    let catcher = lua.create_function(move |_, v: Value| {
        *caught.borrow_mut() = Some(v);
        Ok(())
    })?;
    b.catcher_ref
        .set(registry_ref(lua, Value::Function(catcher))?);
    let bp = b as *const Buffers as *mut c_void;
    let main = &b.main;
    // SAFETY: a protected call (`exec_raw`), so the allocations here may
    // raise; the closure holds only references and copies. Each C closure
    // gets the upvalue `buffers` expects.
    unsafe {
        lua.exec_raw::<Table>((), |l| {
            // Outside callbacks and coroutines (the sandbox has none),
            // mlua runs everything on the main thread: this one.
            main.set(l);
            let is_main = ffi::lua_pushthread(l) == 1;
            ffi::lua_settop(l, -2);
            debug_assert!(is_main, "not the main thread");
            ffi::luaL_checkstack(l, 8, std::ptr::null());
            let closure = |f: CFn| {
                ffi::lua_pushlightuserdata(l, bp);
                ffi::lua_pushcclosure(l, f, 1);
            };
            // The metatable of every light userdata in the state: they are
            // all bytes objects (nothing else in the sandbox makes one).
            ffi::lua_createtable(l, 0, 5);
            let mt = ffi::lua_gettop(l);
            ffi::lua_createtable(l, 0, METHODS.len() as c_int);
            for (name, f) in METHODS {
                closure(*f);
                ffi::lua_setfield(l, -2, name.as_ptr());
            }
            ffi::lua_setfield(l, mt, c"__index".as_ptr());
            for (name, f) in META {
                closure(*f);
                ffi::lua_setfield(l, mt, name.as_ptr());
            }
            // getmetatable(b) is false: scripts cannot change bytes objects.
            ffi::lua_pushboolean(l, 0);
            ffi::lua_setfield(l, mt, c"__metatable".as_ptr());
            ffi::lua_pushlightuserdata(l, std::ptr::null_mut());
            ffi::lua_pushvalue(l, mt);
            ffi::lua_setmetatable(l, -2);
            ffi::lua_settop(l, mt - 1);
            ffi::lua_createtable(l, 0, HELPERS.len() as c_int);
            for (name, f) in HELPERS {
                closure(*f);
                ffi::lua_setfield(l, -2, name.as_ptr());
            }
        })
    }
}

/// Keeps `v` in the registry; its reference.
pub(super) fn registry_ref(lua: &Lua, v: Value) -> mlua::Result<c_int> {
    let mut r = ffi::LUA_NOREF;
    let out = &mut r;
    // SAFETY: a protected call; `luaL_ref` pops the argument.
    unsafe {
        lua.exec_raw::<()>(v, |l| {
            *out = ffi::luaL_ref(l, ffi::LUA_REGISTRYINDEX);
        })?;
    }
    Ok(r)
}

/// The bytes of `v`, for a helper written with mlua: a bytes object of
/// the call in progress or a Lua string.
pub(super) fn with_value<R>(b: &Buffers, v: &Value, f: impl FnOnce(&[u8]) -> R) -> mlua::Result<R> {
    match v {
        Value::String(s) => Ok(f(&s.as_bytes())),
        Value::LightUserData(ud) => b.with_src(Src::Obj(Handle::from_ptr(ud.0)), f),
        other => Err(runtime(format!(
            "expected bytes or a string, got {}",
            other.type_name()
        ))),
    }
}

/// A new bytes object of `data`, for a helper written with mlua (charged
/// to the buffer budget).
pub(super) fn new_value(b: &Buffers, data: Vec<u8>) -> mlua::Result<Value> {
    let h = b.store(b.wrap(data), true)?;
    Ok(Value::LightUserData(mlua::LightUserData(h.to_ptr())))
}

/// What a stage returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Returned {
    /// A live bytes object of this call (a returned string is copied into
    /// a new slot).
    Slot(usize),
    Nil,
    /// Anything else, by type.
    Bad(&'static str),
}

/// Calls a stage function (`f`, a registry reference) with the bytes in
/// slot `input` and `ctx` (a registry reference), or with `ctx` alone
/// (`recover`), in one protected call from Rust.
pub(super) fn call_stage(
    b: &Buffers,
    f: c_int,
    ctx: c_int,
    input: Option<usize>,
) -> mlua::Result<Returned> {
    let l = b.main.get();
    // SAFETY: `l` is the state's main thread (kept by `install`), used
    // from Rust outside any callback, as mlua itself uses it; nothing
    // here raises outside the `lua_pcall`, and the stack is restored.
    unsafe {
        let top = ffi::lua_gettop(l);
        // Three for the call; the error path holds three.
        if ffi::lua_checkstack(l, 3) == 0 {
            return Err(mlua::Error::StackError);
        }
        // Neither reading the registry nor pushing a light userdata
        // allocates or raises, so all of this may run unprotected.
        ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, ffi::lua_Integer::from(f));
        let nargs = match input.map(|slot| b.handle(slot)).transpose() {
            Ok(Some(h)) => {
                push_handle(l, h);
                2
            }
            Ok(None) => 1,
            Err(e) => {
                ffi::lua_settop(l, top);
                return Err(e);
            }
        };
        ffi::lua_rawgeti(l, ffi::LUA_REGISTRYINDEX, ffi::lua_Integer::from(ctx));
        let status = ffi::lua_pcallk(l, nargs, 1, 0, 0, None);
        if status == ffi::LUA_OK {
            // What it returned is on top; reading it raises nothing.
            let got = std::panic::catch_unwind(AssertUnwindSafe(|| returned(l, b)))
                .unwrap_or(Returned::Bad("(an internal error reading it)"));
            ffi::lua_settop(l, top);
            return Ok(got);
        }
        // The error value is on top: hand it to the catcher, an mlua
        // function, so mlua reads it (a Rust error it raised stays that
        // error). A protected call: nothing raises out of it.
        let at = ffi::lua_gettop(l);
        ffi::lua_rawgeti(
            l,
            ffi::LUA_REGISTRYINDEX,
            ffi::lua_Integer::from(b.catcher_ref.get()),
        );
        ffi::lua_pushvalue(l, at);
        let catch = ffi::lua_pcallk(l, 1, 0, 0, 0, None);
        ffi::lua_settop(l, top);
        // The catcher cannot fail but for lack of memory, or when the
        // value was a Rust panic that mlua replays as it reads it: then
        // the panic goes on, as from mlua's own calls.
        if catch == ffi::LUA_ERRRUN {
            panic!("a filter helper panicked (see the message above)");
        }
        let got = if catch == ffi::LUA_OK {
            b.caught.borrow_mut().take()
        } else {
            None
        };
        Err(match got {
            Some(Value::Error(e)) => *e,
            Some(Value::String(s)) if status == ffi::LUA_ERRMEM => {
                mlua::Error::MemoryError(s.to_string_lossy())
            }
            Some(Value::String(s)) => mlua::Error::RuntimeError(s.to_string_lossy()),
            Some(Value::LightUserData(_)) => {
                mlua::Error::RuntimeError("(error object is a bytes object)".into())
            }
            Some(other) => mlua::Error::RuntimeError(format!(
                "(error object is a {} value)",
                other.type_name()
            )),
            None if status == ffi::LUA_ERRMEM => {
                mlua::Error::MemoryError("not enough memory".into())
            }
            None => mlua::Error::RuntimeError("(an error that could not be read)".into()),
        })
    }
}

/// Classifies the value on top of the stack (raises nothing).
unsafe fn returned(l: *mut lua_State, b: &Buffers) -> Returned {
    // SAFETY: reading the top of a live stack.
    unsafe {
        match ffi::lua_type(l, -1) {
            ffi::LUA_TNIL => Returned::Nil,
            ffi::LUA_TSTRING => {
                let mut n = 0usize;
                let p = ffi::lua_tolstring(l, -1, &mut n) as *const u8;
                Returned::Slot(b.insert(std::slice::from_raw_parts(p, n).to_vec()))
            }
            ffi::LUA_TLIGHTUSERDATA => {
                let h = Handle::from_ptr(ffi::lua_touserdata(l, -1));
                match b.get(h) {
                    Ok(_) => Returned::Slot(h.slot as usize),
                    Err(_) => Returned::Bad("a bytes object from an earlier call"),
                }
            }
            t => Returned::Bad(type_name(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_pack_into_a_pointer_and_back() {
        let last_call = (1 << CALL_BITS) - 1;
        for h in [
            Handle { call: 1, slot: 0 },
            Handle {
                call: last_call,
                slot: MAX_SLOTS as u64 - 1,
            },
            Handle {
                call: 12_345,
                slot: 678,
            },
        ] {
            assert_eq!(Handle::from_ptr(h.to_ptr()), h);
        }
    }

    #[test]
    fn call_numbers_wrap_to_one_and_old_handles_stay_dead() {
        let b = Buffers::new(1 << 20);
        let last_call = (1 << CALL_BITS) - 1;
        b.call.set(last_call - 1);
        b.begin(1 << 20);
        assert_eq!(b.call.get(), last_call);
        let slot = b.insert(vec![7]) as u64;
        let old = Handle {
            call: last_call,
            slot,
        };
        assert_eq!(b.get(old).unwrap().as_slice(), [7]);
        b.begin(1 << 20);
        assert_eq!(b.call.get(), 1);
        b.insert(vec![8]);
        assert!(b.get(old).is_err());
        assert_eq!(b.get(Handle { call: 1, slot }).unwrap().as_slice(), [8]);
    }

    #[test]
    fn a_slot_past_the_handle_bits_is_a_memory_error_that_poisons_the_call() {
        let b = Buffers::new(1 << 20);
        b.begin(1 << 20);
        assert_eq!(b.handle(MAX_SLOTS - 1).unwrap().slot, MAX_SLOTS as u64 - 1);
        assert!(!b.over_budget());
        let e = b.handle(MAX_SLOTS).unwrap_err();
        assert!(e.to_string().contains("bytes objects in one call"), "{e}");
        assert!(b.over_budget());
    }
}
