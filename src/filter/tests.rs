//! Tests with real Lua and the example filters in `examples/filters/`.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use super::*;
use crate::error::Coded;

/// The tests run one at a time: the leak test reads the process's RSS.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub(super) fn filters_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/filters")
}

pub(super) fn example(name: &str) -> Stage {
    Stage::new(Script::from_file(&filters_dir().join(format!("{name}.lua"))).unwrap())
}

/// Deterministic pseudo-random bytes.
pub(super) fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Bytes that compress (text-like: words from a small vocabulary).
pub(super) fn compressible(len: usize, seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the ",
        "store ",
        "object ",
        "layer ",
        "block ",
        "volume ",
        "image ",
        "zstd ",
        "lua ",
        "filter ",
        "fukastor ",
        "\n",
        "0x",
        "42 ",
        "= ",
        "{ ",
        "} ",
    ];
    let r = random(len, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[r[i % r.len().max(1)] as usize % WORDS.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

const SIZES: &[usize] = &[0, 1, 4095, 4096, 64 << 10, 1 << 20];

pub(super) fn obj(seed: u64) -> Ctx {
    Ctx::Object {
        digest: hex::encode(random(32, seed)),
        size: 0,
    }
}

fn obj_sized(seed: u64, size: usize) -> Ctx {
    Ctx::Object {
        digest: hex::encode(random(32, seed)),
        size: size as u64,
    }
}

fn block(n: u64) -> Ctx {
    Ctx::Block {
        volume: "vol1".into(),
        layer: 7,
        block: n,
        size: 4096,
    }
}

pub(super) fn key_file(dir: &Path, byte: u8) -> PathBuf {
    let p = dir.join(format!("key-{byte}"));
    std::fs::write(&p, format!("{}\n", hex::encode([byte; 32]))).unwrap();
    p
}

fn inline(name: &str, source: &str) -> Chain {
    Chain::new(
        vec![Stage::new(Script::new(name, source))],
        Limits::default(),
    )
    .unwrap()
}

fn assert_code<T: std::fmt::Debug>(r: Result<T>, code: &str) -> FilterError {
    match r {
        Ok(v) => panic!("expected {code}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.code(), code, "{e}");
            assert!(!e.hint().is_empty());
            e
        }
    }
}

fn round_trip(chain: &Chain, data: &[u8], ctx: &Ctx) -> Vec<u8> {
    let enc = chain.encode(data.to_vec(), ctx).unwrap();
    let dec = chain.decode(enc.clone(), ctx).unwrap();
    assert!(dec == data, "round trip of {} bytes", data.len());
    enc
}

#[test]
fn filter_each_example_round_trips() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let key = key_file(tmp.path(), 1);
    let stages = [
        example("compress").param("level", 3),
        example("encrypt").param("key_file", key.to_str().unwrap()),
        example("checksum"),
        example("replicate").param("dir", tmp.path().join("replicas").to_str().unwrap()),
    ];
    for stage in stages {
        let name = stage.script.name().to_owned();
        let chain = Chain::new(vec![stage], Limits::default()).unwrap();
        for (i, &len) in SIZES.iter().enumerate() {
            for data in [random(len, i as u64), compressible(len, i as u64)] {
                let ctx = obj_sized(i as u64, len);
                let enc = round_trip(&chain, &data, &ctx);
                match name.as_str() {
                    "checksum" => assert_eq!(enc.len(), len + 4),
                    "encrypt" => assert_eq!(enc.len(), len + native::SEALED_OVERHEAD),
                    "replicate" => assert_eq!(enc, data),
                    _ => {}
                }
                round_trip(&chain, &data, &block(i as u64));
            }
        }
    }
}

#[test]
fn filter_chains_round_trip() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let key = key_file(tmp.path(), 2);
    let key = key.to_str().unwrap();
    let replicas = tmp.path().join("r");
    let replicas = replicas.to_str().unwrap();
    let chains = [
        vec![
            example("compress"),
            example("encrypt").param("key_file", key),
            example("checksum"),
            example("replicate").param("dir", replicas),
        ],
        vec![
            example("compress").param("level", 1),
            example("checksum"),
            example("replicate").param("dir", replicas),
        ],
        vec![
            example("checksum"),
            example("compress"),
            example("checksum"),
        ],
        vec![
            example("encrypt").param("key_file", key),
            example("compress"),
        ],
    ];
    for stages in chains {
        let chain = Chain::new(stages, Limits::default()).unwrap();
        for (i, &len) in SIZES.iter().enumerate() {
            let data = compressible(len, 100 + i as u64);
            let enc = round_trip(&chain, &data, &obj_sized(i as u64, len));
            if len >= 4096 && chain.spec().filters[0].name == "compress" {
                assert!(enc.len() < len / 2, "compressible data compressed");
            }
            round_trip(&chain, &random(len, i as u64), &block(i as u64));
        }
    }
}

#[test]
fn filter_empty_chain_is_identity() {
    let _g = serial();
    let chain = Chain::new(Vec::new(), Limits::default()).unwrap();
    assert!(chain.is_empty() && chain.spec().is_empty());
    assert_code(chain.recover(&obj(1)), "FK0905");
    assert_eq!(chain.encode(b"abc".to_vec(), &obj(1)).unwrap(), b"abc");
    assert_eq!(chain.decode(b"abc".to_vec(), &obj(1)).unwrap(), b"abc");
}

#[test]
fn filter_compressed_is_a_standard_zstd_frame() {
    let _g = serial();
    let chain = Chain::new(vec![example("compress")], Limits::default()).unwrap();
    let data = compressible(100_000, 3);
    let enc = chain.encode(data.clone(), &obj(3)).unwrap();
    assert_eq!(&enc[..4], &[0x28, 0xb5, 0x2f, 0xfd], "zstd magic");
    assert_eq!(zstd::decode_all(&enc[..]).unwrap(), data);
    // And a frame written by the zstd library's streaming encoder (no
    // content size in the header) decodes too.
    let streamed = {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 5).unwrap();
        std::io::Write::write_all(&mut e, &data).unwrap();
        e.finish().unwrap()
    };
    assert_eq!(chain.decode(streamed, &obj(3)).unwrap(), data);
}

#[test]
fn filter_ciphertext_hides_plaintext() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let key = key_file(tmp.path(), 3);
    let chain = Chain::new(
        vec![example("encrypt").param("key_file", key.to_str().unwrap())],
        Limits::default(),
    )
    .unwrap();
    let plain = b"TOP-SECRET-PLAINTEXT-".repeat(3000);
    let ctx = obj(4);
    let a = chain.encode(plain.clone(), &ctx).unwrap();
    let b = chain.encode(plain.clone(), &ctx).unwrap();
    assert_ne!(a, b, "a fresh nonce each time");
    for enc in [&a, &b] {
        assert!(!enc.windows(6).any(|w| w == b"SECRET"));
        assert!(
            !enc.windows(8)
                .any(|w| plain.windows(8).take(21).any(|p| p == w))
        );
        assert_eq!(&enc[..4], native::SEALED_MAGIC);
    }
    assert_eq!(chain.decode(a, &ctx).unwrap(), plain);
}

#[test]
fn filter_wrong_key_is_coded() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let k1 = key_file(tmp.path(), 5);
    let k2 = key_file(tmp.path(), 6);
    let c1 = Chain::new(
        vec![example("encrypt").param("key_file", k1.to_str().unwrap())],
        Limits::default(),
    )
    .unwrap();
    let c2 = Chain::new(
        vec![example("encrypt").param("key_file", k2.to_str().unwrap())],
        Limits::default(),
    )
    .unwrap();
    let ctx = obj(5);
    let enc = c1.encode(random(5000, 5), &ctx).unwrap();
    let e = assert_code(c2.decode(enc.clone(), &ctx), "FK0906");
    assert!(e.to_string().contains("encrypted with key"), "{e}");
    // Moved to another object: authentication fails, damage.
    assert_code(c1.decode(enc.clone(), &obj(6)), "FK0905");
    // Tampered: damage.
    let mut bad = enc.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 1;
    assert_code(c1.decode(bad, &ctx), "FK0905");
    // Not encrypted at all.
    assert_code(c1.decode(b"plain".to_vec(), &ctx), "FK0905");
    assert_eq!(c1.decode(enc, &ctx).unwrap(), random(5000, 5));
    // Keys that cannot be had are reported when the chain is built.
    let missing = tmp.path().join("nope");
    let e = Chain::new(
        vec![example("encrypt").param("key_file", missing.to_str().unwrap())],
        Limits::default(),
    );
    assert_code(e, "FK0907");
    let e = Chain::new(
        vec![example("encrypt").param("key_env", "FUKASTOR_TEST_NO_SUCH_VARIABLE")],
        Limits::default(),
    );
    assert_code(e, "FK0907");
    let short = tmp.path().join("short");
    std::fs::write(&short, "abcd").unwrap();
    let e = Chain::new(
        vec![example("encrypt").param("key_file", short.to_str().unwrap())],
        Limits::default(),
    );
    assert_code(e, "FK0907");
    assert_code(
        Chain::new(vec![example("encrypt")], Limits::default()),
        "FK0907",
    );
}

#[test]
fn filter_flipped_byte_is_damage() {
    let _g = serial();
    let chain = Chain::new(vec![example("checksum")], Limits::default()).unwrap();
    let data = random(4096, 7);
    let ctx = obj(7);
    let enc = chain.encode(data.clone(), &ctx).unwrap();
    for pos in [0, 1000, 4095, 4096, 4099] {
        let mut bad = enc.clone();
        bad[pos] ^= 0x20;
        let e = assert_code(chain.decode(bad, &ctx), "FK0905");
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
        assert!(e.is_damage());
    }
    assert_code(chain.decode(b"ab".to_vec(), &ctx), "FK0905");
    assert_eq!(chain.decode(enc, &ctx).unwrap(), data);

    // zstd's own frame checksum catches damage too.
    let chain = Chain::new(vec![example("compress")], Limits::default()).unwrap();
    let enc = chain.encode(compressible(50_000, 7), &ctx).unwrap();
    let mut bad = enc.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x55;
    assert_code(chain.decode(bad, &ctx), "FK0905");
    assert_code(chain.decode(b"not zstd".to_vec(), &ctx), "FK0905");
}

#[test]
fn filter_replica_serves_the_good_copy() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("replicas");
    let chain = Chain::new(
        vec![
            example("compress"),
            example("checksum"),
            example("replicate").param("dir", dir.to_str().unwrap()),
        ],
        Limits::default(),
    )
    .unwrap();
    for (ctx, len) in [(obj(8), 100_000), (block(9), 4096)] {
        let data = compressible(len, 8);
        let enc = chain.encode(data.clone(), &ctx).unwrap();
        let replica = native::replica_path(&dir, &ctx).unwrap();
        assert_eq!(std::fs::read(&replica).unwrap(), enc);

        let clean = chain.decode_report(enc.clone(), &ctx).unwrap();
        assert_eq!(clean.recovered_by, None);

        let mut bad = enc.clone();
        bad[3] ^= 1;
        let got = chain.decode_report(bad.clone(), &ctx).unwrap();
        assert_eq!(got.data, data);
        assert_eq!(got.recovered_by.as_deref(), Some("replicate"));

        // Primary unreadable: from the replica alone.
        let got = chain.recover(&ctx).unwrap();
        assert_eq!(
            (got.data, got.recovered_by.as_deref()),
            (data.clone(), Some("replicate"))
        );

        // Both damaged: damage, and it says so.
        let mut bad_replica = enc.clone();
        bad_replica[5] ^= 1;
        std::fs::write(&replica, &bad_replica).unwrap();
        let e = assert_code(chain.decode(bad.clone(), &ctx), "FK0905");
        assert!(e.to_string().contains("replica is damaged too"), "{e}");
        // No replica: damage.
        std::fs::remove_file(&replica).unwrap();
        assert_code(chain.decode(bad, &ctx), "FK0905");
        assert_code(chain.recover(&ctx), "FK0905");
        // The chain still works.
        assert_eq!(chain.decode(enc, &ctx).unwrap(), data);
    }
    // A replica directory that cannot be written is a coded error.
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    let chain = Chain::new(
        vec![example("replicate").param("dir", file.to_str().unwrap())],
        Limits::default(),
    )
    .unwrap();
    assert_code(chain.encode(b"x".to_vec(), &obj(1)), "FK0908");
    let chain = Chain::new(
        vec![example("replicate").param("dir", "relative/dir")],
        Limits::default(),
    )
    .unwrap();
    assert_code(chain.encode(b"x".to_vec(), &obj(1)), "FK0908");
}

#[test]
fn filter_replica_behind_encryption() {
    // compress → encrypt → replicate: damage found by authentication.
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let key = key_file(tmp.path(), 9);
    let chain = Chain::new(
        vec![
            example("compress"),
            example("encrypt").param("key_file", key.to_str().unwrap()),
            example("replicate").param("dir", tmp.path().join("r").to_str().unwrap()),
        ],
        Limits::default(),
    )
    .unwrap();
    let ctx = obj(10);
    let data = compressible(70_000, 10);
    let mut enc = chain.encode(data.clone(), &ctx).unwrap();
    let last = enc.len() - 1;
    enc[last] ^= 0x80;
    let got = chain.decode_report(enc, &ctx).unwrap();
    assert_eq!(got.data, data);
    assert_eq!(got.recovered_by.as_deref(), Some("replicate"));
}

/// Runs a sandbox probe: `bad` (Lua statements) runs when the input is
/// the single byte "!", otherwise the script passes its input through.
/// Checks the bad call fails with `code` and that the chain then works.
fn probe(bad: &str, code: &str, limits: Limits) -> FilterError {
    let source = format!(
        "function encode(b, ctx)\n  if #b == 1 then\n{bad}\n  end\n  return b\nend\n\
         function decode(b, ctx) return b end\n"
    );
    let chain = Chain::new(vec![Stage::new(Script::new("probe", source))], limits).unwrap();
    let ctx = obj(11);
    let e = assert_code(chain.encode(b"!".to_vec(), &ctx), code);
    eprintln!("[{}] {bad}\n    -> {e}", e.code());
    for _ in 0..2 {
        assert_eq!(
            chain.encode(b"ok".to_vec(), &ctx).unwrap(),
            b"ok",
            "after {bad}"
        );
    }
    e
}

/// `l` with room in the Lua heap for a few MiB of strings.
fn big_heap(l: Limits) -> Limits {
    Limits {
        memory: 64 << 20,
        ..l
    }
}

fn small() -> Limits {
    Limits {
        memory: 8 << 20,
        instructions: 2_000_000,
        buffers: 4 << 20,
    }
}

#[test]
fn filter_sandbox_refuses_escapes() {
    let _g = serial();
    let l = small();
    probe("io.open('/etc/passwd')", "FK0901", l);
    probe("os.execute('touch /tmp/fukastor-pwned')", "FK0901", l);
    probe("require('os')", "FK0901", l);
    probe("return package.loadlib('libc.so.6', 'system')", "FK0901", l);
    probe("debug.sethook()", "FK0901", l);
    probe("dofile('/etc/passwd')", "FK0901", l);
    probe("loadfile('/etc/passwd')", "FK0901", l);
    probe("collectgarbage('stop')", "FK0901", l);
    probe("coroutine.wrap(function() end)()", "FK0901", l);
    // Bytecode: no string.dump, no load, and the metatable route is closed.
    probe("local f = load(string.dump(function() end))", "FK0901", l);
    probe("local s = string.dump(print)", "FK0901", l);
    probe("local d = ('').dump(print)", "FK0901", l);
    probe("local idx = getmetatable('').__index", "FK0901", l);
    probe("local f = load('\\27Lua\\x54\\0')", "FK0901", l);
    // Shared tables are read-only; globals are read-only in calls; the
    // tables behind them cannot be reached through pairs, and rawset
    // cannot bypass them either.
    for bad in [
        "string.rep = nil",
        "fk.crc32c = nil",
        "leak = b",
        "encode = nil",
        "decode = encode",
        "params = {}",
        "fk = {}",
        "_G.x = 1",
        "setmetatable(_G, nil)",
        "params.level = 99",
        "local _, g = pairs(_G) g.leak = b",
        "local _, g = pairs(_G) g.encode = nil",
        "local _, s = pairs(string) s.rep = nil",
        "local _, f = pairs(fk) f.crc32c = nil",
        "local _, p = pairs(params) p.level = 99",
        "local _, p = pairs(params) rawset(p, 'level', 99)",
        "rawset(fk, 'crc32c', 1)",
        "rawset(string, 'rep', 1)",
        "rawset(_G, 'leak', b)",
        "rawset(params, 'level', 99)",
    ] {
        probe(bad, "FK0901", l);
    }
    // Resources.
    probe("local s = string.rep('x', 1 << 30)", "FK0902", l);
    let heap = Limits {
        instructions: 200_000_000,
        ..l
    };
    probe(
        "local t = {} for i = 1, 1e9 do t[i] = i end",
        "FK0902",
        heap,
    );
    probe("local s = 'x' while true do s = s .. s end", "FK0902", l);
    probe("while true do end", "FK0903", l);
    probe("for i = 1, 1e12 do end", "FK0903", l);
    probe(
        "while true do pcall(function() while true do end end) end",
        "FK0903",
        l,
    );
    probe(
        "while true do xpcall(function() while true do end end, function() while true do end end) end",
        "FK0903",
        l,
    );
    // The engine never runs an error object's `__tostring`: a table
    // thrown out of a stage is reported by its type.
    let e = probe(
        "error(setmetatable({}, {__tostring = function() while true do end end}))",
        "FK0901",
        l,
    );
    assert!(
        e.to_string().contains("error object is a table value"),
        "{e}"
    );
    let e = probe("print(b, #b) error(b)", "FK0901", l);
    assert!(
        e.to_string().contains("error object is a bytes object"),
        "{e}"
    );
    probe(
        "setmetatable({}, {__gc = function() while true do end end})",
        "FK0901",
        l,
    );
    probe(
        "do local x <close> = setmetatable({}, {__close = function() while true do end end}) end",
        "FK0903",
        l,
    );
    probe(
        "local x <close> = setmetatable({}, {__close = function() while true do end end}) error('e')",
        "FK0903",
        l,
    );
    probe(
        "for i = 1, 100 do pcall(string.rep, 'x', 1 << 30) end",
        "FK0902",
        l,
    );
    probe(
        "local t = {} for i = 1, 1e6 do t[i] = fk.bytes(string.rep('x', 4096)) end",
        "FK0902",
        l,
    );
    probe(
        "local b2 = b for i = 1, 40 do b2 = fk.concat(b2, b2) end",
        "FK0902",
        l,
    );
    // Many small objects: each costs the buffer budget besides its bytes.
    probe("for i = 1, 1e7 do fk.bytes('') end", "FK0902", l);
    // One concatenation of many arguments naming one large string (100 GiB
    // in all) fails on the budget before anything is allocated.
    probe(
        "local s = string.rep('x', 1 << 20) local t = {} for i = 1, 100000 do t[i] = s end \
         fk.concat(table.unpack(t))",
        "FK0902",
        big_heap(l),
    );
    let big = Limits {
        memory: 64 << 20,
        instructions: 50_000_000,
        buffers: 4 << 20,
    };
    let e = probe(
        "local function f(n) return f(n + 1) + 1 end f(1)",
        "FK0901",
        big,
    );
    assert!(e.to_string().contains("stack overflow"), "{e}");
    let e = probe(
        "local function f() local ok, e = pcall(f) error(e, 0) end f()",
        "FK0901",
        big,
    );
    assert!(e.to_string().contains("stack overflow"), "{e}");
    // A zstd bomb: a frame claiming more than the buffer budget.
    probe(
        "local z = fk.zstd_compress(string.rep('\\0', 6 << 20), 1) fk.zstd_decompress(z)",
        "FK0902",
        big,
    );
    // Errors and bad values.
    let e = probe("error('boom')", "FK0901", l);
    assert!(e.to_string().contains("probe:3: boom"), "{e}");
    probe("error({})", "FK0901", l);
    probe("return 42", "FK0904", l);
    probe("return nil", "FK0904", l);
    probe("return {}", "FK0904", l);
    probe("return true", "FK0904", l);
    probe("return fk.key", "FK0904", l);
    probe("fk.crc32c(42)", "FK0901", l);
    probe("fk.zstd_compress(b, 99)", "FK0901", l);
    probe("fk.encrypt(b, b)", "FK0901", l);
    probe("fk.replica_write('/tmp', 5)", "FK0901", l);
    probe("fk.damaged('found rot')", "FK0905", l);
}

#[test]
fn filter_sandbox_errors_in_decode_and_load() {
    let _g = serial();
    let chain = inline(
        "dec",
        "function encode(b) return b end\nfunction decode(b) error('bad decode') end",
    );
    let e = assert_code(chain.decode(b"x".to_vec(), &obj(1)), "FK0901");
    assert!(e.to_string().contains("dec (decode)"), "{e}");
    assert_eq!(chain.encode(b"x".to_vec(), &obj(1)).unwrap(), b"x");

    let load = |src: &[u8]| Chain::new(vec![Stage::new(Script::new("l", src.to_vec()))], small());
    assert_code(load(b"function encode("), "FK0900");
    assert_code(load(b"function encode(b) return b end"), "FK0900");
    assert_code(load(b"encode = 1 decode = 2"), "FK0900");
    assert_code(load(b"error('at load')"), "FK0900");
    assert_code(load(b"io.write('x')"), "FK0900");
    assert_code(load(b"while true do end"), "FK0903");
    assert_code(load(b"local s = string.rep('x', 1 << 30)"), "FK0902");
    // Precompiled chunks are refused: real bytecode and a crafted header.
    let bytecode = {
        let lua = mlua::Lua::new();
        lua.load("function encode(b) return b end function decode(b) return b end")
            .into_function()
            .unwrap()
            .dump(false)
    };
    assert_eq!(&bytecode[..4], b"\x1bLua");
    let e = assert_code(load(&bytecode), "FK0900");
    assert!(e.to_string().contains("binary"), "{e}");
    assert_code(
        load(b"\x1bLua\x54\x00\x19\x93\r\n\x1a\n\x04\x08\x08"),
        "FK0900",
    );
    assert_code(
        Chain::new(vec![Stage::new(Script::new("../x", "x"))], small()),
        "FK0900",
    );
}

#[test]
fn filter_state_does_not_leak_between_calls() {
    let _g = serial();
    // A buffer kept in an upvalue is dead in the next call.
    let chain = inline(
        "keep",
        "local kept\nfunction encode(b) if kept then return kept end kept = b return b end\n\
         function decode(b) return b end",
    );
    assert_eq!(chain.encode(b"first".to_vec(), &obj(1)).unwrap(), b"first");
    assert_code(chain.encode(b"second".to_vec(), &obj(2)), "FK0904");
    // ctx shows the call's own fields; a write to it fails.
    let chain = inline(
        "ctx",
        "function encode(b, ctx)\n  local wrote = pcall(function() ctx.mark = true end)\n  \
         return fk.concat(tostring(wrote), ' ', ctx.kind, ' ', tostring(ctx.digest or ctx.volume), \
         ' ', tostring(ctx.block), ' ', tostring(ctx.size))\nend\nfunction decode(b) return b end",
    );
    let d = match obj(3) {
        Ctx::Object { digest, .. } => digest,
        Ctx::Block { .. } => unreachable!(),
    };
    for _ in 0..3 {
        assert_eq!(
            chain.encode(Vec::new(), &obj(3)).unwrap(),
            format!("false object {d} nil 0").into_bytes()
        );
    }
    assert_eq!(
        chain.encode(Vec::new(), &block(12)).unwrap(),
        b"false block vol1 12 4096"
    );
    // Bytes objects and helpers from Lua.
    let chain = Chain::new(
        vec![
            Stage::new(Script::new(
                "bytes",
                r#"function encode(b)
             assert(#b == 5 and b:len() == 5 and b:str() == "hello" and b:str(2, 3) == "el")
             assert(fk.equal(b:sub(-3), fk.bytes("llo")) and fk.equal("llo", b:sub(-3)))
             assert(not fk.equal(b, "hell") and fk.equal("", ""))
             -- `==` is identity, as for tables: compare contents with fk.equal.
             local c = fk.bytes(b)
             assert(b == b and c ~= b and fk.equal(c, b) and tostring(b) == "bytes(5)")
             local seen = {[b] = 1}
             assert(seen[b] == 1 and seen[c] == nil)
             assert(fk.crc32c("123456789") == 0xE3069283)
             local ok, err = pcall(fk.checksum_open, "xxxxxxxx")
             assert(not ok and fk.is_damaged(err))
             local ok2, err2 = pcall(error, "plain")
             assert(not ok2 and not fk.is_damaged(err2))
             local n = 0
             for k, v in pairs(params) do n = n + 1 end
             assert(n == 2 and params.answer == 42 and params.name == "x")
             return b .. "!" .. b:sub(1, 1)
           end
           function decode(b) return b:str(1, -3) end"#,
            ))
            .param("answer", 42)
            .param("name", "x"),
        ],
        Limits::default(),
    )
    .unwrap();
    let enc = chain.encode(b"hello".to_vec(), &obj(4)).unwrap();
    assert_eq!(enc, b"hello!h");
    assert_eq!(chain.decode(enc, &obj(4)).unwrap(), b"hello");
}

#[test]
fn filter_chain_spec_records_the_chain() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let key = key_file(tmp.path(), 13);
    let chain = Chain::new(
        vec![
            example("compress").param("level", 5),
            example("encrypt").param("key_file", key.to_str().unwrap()),
        ],
        Limits::default(),
    )
    .unwrap();
    let json = chain.spec().to_json();
    let spec = ChainSpec::from_json(&json).unwrap();
    assert_eq!(&spec, chain.spec());
    assert_eq!(spec.filters[0].name, "compress");
    assert_eq!(spec.filters[0].params["level"], Param::Int(5));
    assert_eq!(spec.filters[0].sha256.len(), 64);
    assert_eq!(spec.digest().len(), 64);
    assert!(
        json.starts_with(r#"{"version":1,"filters":[{"name":"compress","sha256":""#),
        "{json}"
    );

    // Rebuilt from the record and the scripts: reads what was written.
    let ctx = obj(13);
    let enc = chain.encode(b"recorded".to_vec(), &ctx).unwrap();
    let again = Chain::from_spec(&spec, &filters_dir(), Limits::default()).unwrap();
    assert_eq!(again.decode(enc.clone(), &ctx).unwrap(), b"recorded");

    // Content-addressed copies are found by digest first.
    let store = tmp.path().join("filters");
    std::fs::create_dir(&store).unwrap();
    for f in &spec.filters {
        std::fs::copy(
            filters_dir().join(format!("{}.lua", f.name)),
            store.join(format!("{}.lua", f.sha256)),
        )
        .unwrap();
    }
    let again = Chain::from_spec(&spec, &store, Limits::default()).unwrap();
    assert_eq!(again.decode(enc, &ctx).unwrap(), b"recorded");

    // A changed script is refused.
    std::fs::write(store.join("compress.lua"), "-- changed").unwrap();
    std::fs::remove_file(store.join(format!("{}.lua", spec.filters[0].sha256))).unwrap();
    assert_code(Chain::from_spec(&spec, &store, Limits::default()), "FK0909");
    // Malformed specs.
    assert_code(ChainSpec::from_json("{}"), "FK0909");
    assert_code(
        ChainSpec::from_json(r#"{"version":2,"filters":[]}"#),
        "FK0909",
    );
    assert_code(
        ChainSpec::from_json(r#"{"version":1,"filters":[{"name":"x","sha256":"zz"}]}"#),
        "FK0909",
    );
    assert_code(
        ChainSpec::from_json(&format!(
            r#"{{"version":1,"filters":[{{"name":"../x","sha256":"{}"}}]}}"#,
            "a".repeat(64)
        )),
        "FK0909",
    );
    assert!(
        ChainSpec::from_json(r#"{"version":1,"filters":[]}"#)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn filter_threads_share_a_chain() {
    let _g = serial();
    let chain = Chain::new(
        vec![example("compress"), example("checksum")],
        Limits::default(),
    )
    .unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let chain = chain.clone();
            s.spawn(move || {
                for i in 0..200 {
                    let data = compressible(1000 + i * 37, t * 1000 + i as u64);
                    let ctx = obj(t);
                    let enc = chain.encode(data.clone(), &ctx).unwrap();
                    assert_eq!(chain.decode(enc, &ctx).unwrap(), data);
                }
            });
        }
    });
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

#[test]
fn filter_a_million_calls_leave_memory_flat() {
    let _g = serial();
    let chain = Chain::new(
        vec![example("checksum"), example("compress")],
        Limits::default(),
    )
    .unwrap();
    let ctx = obj(14);
    let data = b"a tiny object".to_vec();
    let run = |n: usize| {
        for _ in 0..n {
            let enc = chain.encode(data.clone(), &ctx).unwrap();
            let dec = chain.decode(enc, &ctx).unwrap();
            assert_eq!(dec.len(), data.len());
        }
    };
    run(20_000);
    let rss0 = rss_bytes();
    let lua0 = chain.lua_memory().unwrap();
    let t = std::time::Instant::now();
    run(500_000); // one million calls
    let rss1 = rss_bytes();
    let lua1 = chain.lua_memory().unwrap();
    eprintln!(
        "1M calls in {:.2?}: RSS {} -> {} KiB, Lua heap {} -> {} KiB",
        t.elapsed(),
        rss0 >> 10,
        rss1 >> 10,
        lua0 >> 10,
        lua1 >> 10
    );
    assert!(rss1 < rss0 + (4 << 20), "RSS grew from {rss0} to {rss1}");
    assert!(
        lua1 < lua0 + (512 << 10),
        "Lua heap grew from {lua0} to {lua1}"
    );
}

#[test]
fn filter_views_behave_like_copies() {
    let _g = serial();
    // `checksum_open` and `b:sub` of a bytes object return views of it;
    // nothing a script can do tells them from copies, and what a call
    // returns is exactly the view's bytes (large or small part of a buffer).
    let chain = inline(
        "views",
        r#"function encode(b)
             local s = fk.checksum_seal(b)
             local body = fk.checksum_open(s)
             assert(fk.equal(body, b) and #s == #b + 4 and #body == #b and s:str(1, #b) == b:str())
             local mid = body:sub(2, -2)
             assert(mid:str() == b:str(2, -2) and mid:sub(2):str() == b:str(3, -2))
             assert(#mid:sub(5, 4) == 0 and fk.equal(body:sub(-3), b:sub(-3)))
             local ok, err = pcall(fk.checksum_open, s:sub(2))
             assert(not ok and fk.is_damaged(err))
             if #b > 100 then return mid:sub(1, 3) end
             return mid
           end
           function decode(b) return fk.checksum_open(fk.checksum_seal(b)) end"#,
    );
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(chain.encode(data.clone(), &obj(1)).unwrap(), data[1..4]);
    assert_eq!(
        chain.encode(data[..50].to_vec(), &obj(1)).unwrap(),
        data[1..49]
    );
    assert_eq!(chain.decode(data.clone(), &obj(1)).unwrap(), data);
    // The body of a stored frame, its trailer stripped, through the chain.
    let chain = inline(
        "open",
        "function encode(b) return fk.checksum_seal(b) end\n\
         function decode(b) return fk.checksum_open(b) end",
    );
    let enc = round_trip(&chain, &data, &obj(2));
    let mut bad = enc.clone();
    bad[10] ^= 1;
    assert_code(chain.decode(bad, &obj(2)), "FK0905");
}

#[test]
fn filter_ctx_is_read_only() {
    let _g = serial();
    // Nothing a script tries to write into ctx (fields, raw keys, a
    // metatable) lands anywhere, so nothing reaches the next call, which
    // sees exactly its own object's or block's fields; a ctx kept from an
    // earlier call shows the call in progress, not the one it came from.
    let chain = inline(
        "ctx",
        r#"local kept
           function encode(b, ctx)
             local failed, said = 0, true
             for _, f in ipairs({
               function() ctx.mark = "x" end,
               function() ctx.size = -1 end,
               function() ctx.kind = "changed" end,
               function() ctx.digest = nil end,
               function() rawset(ctx, "raw", 1) end,
               function() setmetatable(ctx, {__index = function() return "meta" end}) end,
             }) do
               local ok, err = pcall(f)
               if not ok then failed = failed + 1 end
               if ok or not tostring(err):find("read%-only") and not tostring(err):find("table expected") then
                 said = false
               end
             end
             local current = kept == nil or (kept.kind == ctx.kind and kept.size == ctx.size
               and kept.digest == ctx.digest and kept.volume == ctx.volume and kept.block == ctx.block)
             kept = ctx
             local clean = ctx.mark == nil and ctx.raw == nil and getmetatable(ctx) == false
             return (failed == 6 and said and current and clean) and "read-only" or "written"
           end
           function decode(b, ctx)
             local keys = {}
             for k, v in pairs(ctx) do keys[#keys + 1] = k .. "=" .. tostring(v) end
             table.sort(keys)
             return table.concat(keys, ",") .. " " .. tostring(ctx)
           end"#,
    );
    for seed in [1, 1, 2] {
        assert_eq!(
            chain.encode(b"x".to_vec(), &obj(seed)).unwrap(),
            b"read-only"
        );
    }
    for seed in [2, 3] {
        let Ctx::Object { digest, .. } = obj_sized(seed, 77) else {
            unreachable!()
        };
        let got = chain.decode(b"x".to_vec(), &obj_sized(seed, 77)).unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            format!("digest={digest},kind=object,size=77 ctx(object {digest})")
        );
        chain.encode(b"x".to_vec(), &obj(seed)).unwrap();
    }
    for n in [5, 6] {
        assert_eq!(
            chain.encode(b"x".to_vec(), &block(n)).unwrap(),
            b"read-only"
        );
        let got = chain.decode(b"x".to_vec(), &block(n)).unwrap();
        assert_eq!(
            String::from_utf8(got).unwrap(),
            format!(
                "block={n},kind=block,layer=7,size=4096,volume=vol1 \
                 ctx(volume vol1 layer 7 block {n})"
            )
        );
    }
}

#[test]
fn filter_seal_in_place_equals_a_copy() {
    let _g = serial();
    // fk.checksum_seal appends the trailer to a buffer only its argument
    // uses (no copy); the argument still shows its old bytes, and a second
    // seal of it (now shared) copies: every result is the same.
    let chain = inline(
        "seal",
        r#"function encode(b)
             local body = b:str()
             local s1 = fk.checksum_seal(b)
             assert(b:str() == body and #b == #body)
             local s2 = fk.checksum_seal(b)
             local s3 = fk.checksum_seal(b:sub(1))
             local s4 = fk.checksum_seal(body)
             assert(fk.equal(s1, s2) and fk.equal(s2, s3) and fk.equal(s3, s4))
             assert(#s1 == #body + 4 and fk.equal(fk.checksum_open(s1), b))
             return s1
           end
           function decode(b) return fk.checksum_open(b) end"#,
    );
    for &size in SIZES {
        let data = random(size, size as u64);
        let enc = round_trip(&chain, &data, &obj(4));
        assert_eq!(enc, native::checksum_seal(&data));
        let mut roomy = Vec::with_capacity(size + 4);
        roomy.extend_from_slice(&data);
        assert_eq!(native::checksum_append(roomy), enc);
        assert_eq!(native::checksum_append(data.clone()), enc);
    }
}

#[test]
fn filter_globals_set_at_load_are_read_only_in_calls() {
    let _g = serial();
    // A global the top level defined is as read-only in a call as a new
    // one: a call cannot change it for the next call.
    let chain = inline(
        "counter",
        r#"count = 0
           function encode(b)
             local ok, err = pcall(function() count = count + 1 end)
             assert(not ok and tostring(err):find("read%-only"), tostring(err))
             -- pairs still lists the globals (and the sandbox's names),
             -- through the environment itself, not the table behind it.
             local seen, state = {}, select(2, pairs(_G))
             for k in pairs(_G) do seen[k] = true end
             assert(seen.count and seen.encode and seen.fk and state == _G)
             local n = 0
             for k in pairs(fk) do n = n + 1 end
             assert(n > 10 and select(2, pairs(fk)) == fk)
             return fk.bytes(tostring(count))
           end
           function decode(b) return b end"#,
    );
    for _ in 0..3 {
        assert_eq!(chain.encode(b"x".to_vec(), &obj(1)).unwrap(), b"0");
    }
}

#[test]
fn filter_arguments_and_unreadable_scripts_say_what_to_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope.lua");
    let e = Stage::from_arg(missing.to_str().unwrap()).unwrap_err();
    assert_eq!(e.code(), "FK0900", "{e}");
    assert!(e.to_string().contains("nope.lua"), "{e}");
    assert!(e.hint().contains("path"), "{}", e.hint());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/filters/checksum.lua");
    let script = script.to_str().unwrap();
    for bad in [
        ",level=3".to_owned(),
        format!("{script},level"),
        format!("{script},=3"),
    ] {
        let e = Stage::from_arg(&bad).unwrap_err();
        assert_eq!(e.code(), "FK0900", "{e}");
        assert!(e.to_string().starts_with("--filter "), "{e}");
        assert!(e.hint().contains("--filter SCRIPT.lua"), "{}", e.hint());
    }
    assert!(Stage::from_arg(&format!("{script},level=3")).is_ok());
}
