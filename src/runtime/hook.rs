//! podman's OCI hooks (hooks.d schema 1.0.0; the JSON files are in `hooks/`).
//!
//! - `precreate` reads the runtime config podman proposes on stdin. When
//!   its annotation `io.fukastor.image` names an image, it creates a
//!   container from it (named by annotation `io.fukastor.name`, or
//!   generated), mounts it, and prints the config with `root.path` set to
//!   the container's rootfs and annotation `io.fukastor.container` set to its
//!   name; everything else is printed as it came. crun bind-mounts
//!   `root.path` before the `createRuntime` hooks, which is why this must
//!   happen at precreate.
//! - `poststop` reads the container state on stdin, unmounts the container
//!   named by `io.fukastor.container`, then, per annotation
//!   `io.fukastor.poststop`: `remove` (the default) removes it, `keep` keeps
//!   it stopped, `snapshot:NAME` takes snapshot NAME and keeps it.
//!
//! Any failure is a coded error on stderr and a non-zero exit, which makes
//! podman stop; precreate undoes what it did first, so nothing stays
//! mounted or created.

use std::io::{Read, Write};
use std::path::Path;

use serde_json::Value;

use super::{Result, RuntimeError};
use crate::container::{Containers, DEFAULT_SIZE};
use crate::volume::server::{self, Request};

/// The annotation naming the image.
pub const IMAGE: &str = "io.fukastor.image";
/// The annotation naming the container (set by precreate; may be given).
pub const NAME: &str = "io.fukastor.name";
/// The annotation precreate adds for poststop.
pub const CONTAINER: &str = "io.fukastor.container";
/// What poststop does: `remove`, `keep`, `snapshot:NAME`.
pub const POSTSTOP: &str = "io.fukastor.poststop";
/// The writable layer's size (`10G`, …).
pub const SIZE: &str = "io.fukastor.size";

/// Largest input accepted on stdin.
const MAX_INPUT: u64 = 16 << 20;

fn read_json(input: &mut impl Read, what: &str) -> Result<Value> {
    let mut data = Vec::new();
    input
        .take(MAX_INPUT + 1)
        .read_to_end(&mut data)
        .map_err(|e| RuntimeError::HookInput(format!("reading the {what}: {e}")))?;
    if data.len() as u64 > MAX_INPUT {
        return Err(RuntimeError::HookInput(format!(
            "the {what} is larger than {MAX_INPUT} bytes"
        )));
    }
    let v: Value = serde_json::from_slice(&data)
        .map_err(|e| RuntimeError::HookInput(format!("the {what} is not JSON: {e}")))?;
    if !v.is_object() {
        return Err(RuntimeError::HookInput(format!(
            "the {what} is not a JSON object"
        )));
    }
    Ok(v)
}

fn annotation<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get("annotations")?.get(key)?.as_str()
}

/// `fukastor hook precreate`.
pub fn precreate(store_root: &Path, input: &mut impl Read, out: &mut impl Write) -> Result<()> {
    let mut config = read_json(input, "runtime config")?;
    let Some(image) = annotation(&config, IMAGE).map(str::to_string) else {
        return print(out, &config);
    };
    if !config["annotations"].is_object() {
        return Err(RuntimeError::HookInput(
            "annotations is not an object".into(),
        ));
    }
    if config.get("root").is_some_and(|r| !r.is_object()) {
        return Err(RuntimeError::HookInput("root is not an object".into()));
    }
    let size = match annotation(&config, SIZE) {
        Some(s) => crate::cli::parse_size(s)
            .map_err(|e| RuntimeError::HookInput(format!("annotation {SIZE}: {e}")))?,
        None => DEFAULT_SIZE,
    };
    let name = annotation(&config, NAME).map(str::to_string);
    let containers = Containers::new(store_root);
    let c = containers.create(&image, name.as_deref(), size)?;
    let rootfs = match containers.mount(&c.name, None) {
        Ok(r) => r,
        Err(e) => {
            let _ = containers.remove(&c.name, true);
            return Err(e.into());
        }
    };
    config["root"]["path"] = Value::String(rootfs.display().to_string());
    config["root"]["readonly"] = Value::Bool(false);
    config["annotations"][CONTAINER] = Value::String(c.name.clone());
    // podman 4.3 builds the poststop state from its own annotations, not
    // from the config printed here: remember its container ID.
    if let Some(id) = podman_id(&config) {
        let dir = hooks_dir(store_root);
        let _ = std::fs::create_dir_all(&dir);
        if let Err(e) = crate::store::write_atomic(&dir.join(&id), c.name.as_bytes()) {
            let _ = containers.remove(&c.name, true);
            return Err(crate::store::StoreError::Io {
                context: "recording the podman container".into(),
                source: e,
            }
            .into());
        }
    }
    if let Err(e) = print(out, &config) {
        let _ = containers.remove(&c.name, true);
        return Err(e);
    }
    Ok(())
}

/// Where precreate records podman container IDs: `fukastor/hooks/<id>`
/// holds the name of the fukastor container made for it.
fn hooks_dir(store_root: &Path) -> std::path::PathBuf {
    Containers::new(store_root)
        .paths()
        .store
        .join("fukastor/hooks")
}

fn is_container_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// podman's container ID, as it appears in the config it proposes: in the
/// sources of its bind mounts (`…/overlay-containers/<id>/userdata/…`), or
/// in the cgroup path (`…libpod-<id>…`).
fn podman_id(config: &Value) -> Option<String> {
    let from_mounts = config["mounts"].as_array().and_then(|ms| {
        ms.iter().find_map(|m| {
            let rest = m["source"].as_str()?.split("/overlay-containers/").nth(1)?;
            let id = rest.split('/').next()?;
            is_container_id(id).then(|| id.to_string())
        })
    });
    from_mounts.or_else(|| {
        let path = config["linux"]["cgroupsPath"].as_str()?;
        let rest = path.split("libpod-").nth(1)?;
        let id = rest.get(..64)?;
        is_container_id(id).then(|| id.to_string())
    })
}

/// `fukastor hook poststop`.
pub fn poststop(store_root: &Path, input: &mut impl Read) -> Result<()> {
    let state = read_json(input, "container state")?;
    let mapped = state["id"]
        .as_str()
        .filter(|id| is_container_id(id))
        .and_then(|id| {
            let f = hooks_dir(store_root).join(id);
            let name = std::fs::read_to_string(&f).ok();
            let _ = std::fs::remove_file(&f);
            name
        });
    let Some(name) = annotation(&state, CONTAINER).map(str::to_string).or(mapped) else {
        // Not a container of ours (the hook matched on the image annotation
        // but precreate did not run, e.g. it failed): nothing to undo.
        return Ok(());
    };
    let containers = Containers::new(store_root);
    let policy = annotation(&state, POSTSTOP).unwrap_or("remove").to_string();
    match policy.as_str() {
        // As `run --rm` ends: unmounted and deleted without a flush (its
        // data is being dropped), which also works when the volume stopped
        // taking writes (a full store) and a flush would fail.
        "remove" => {
            if let Some(why) = containers.discard(&name)? {
                super::warn_lost_writes(&name, &why);
            }
        }
        "keep" => containers.umount(&name)?,
        p => match p.strip_prefix("snapshot:") {
            Some(snap) if !snap.is_empty() => {
                containers.umount(&name)?;
                let volume = containers.snapshot_target(&name, false)?;
                server::call(
                    containers.paths(),
                    &Request::Snapshot {
                        volume,
                        name: snap.to_string(),
                        atomic: false,
                    },
                )
                .map_err(crate::container::ContainerError::from)?;
            }
            _ => {
                containers.umount(&name)?;
                return Err(RuntimeError::HookInput(format!(
                    "annotation {POSTSTOP}={p:?}: expected remove, keep or snapshot:NAME (the container was unmounted and kept)"
                )));
            }
        },
    }
    Ok(())
}

fn print(out: &mut impl Write, v: &Value) -> Result<()> {
    serde_json::to_writer(&mut *out, v)
        .map_err(|e| RuntimeError::HookInput(format!("writing the config: {e}")))?;
    out.flush()
        .map_err(|e| RuntimeError::HookInput(format!("writing the config: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_annotation_the_config_passes_unchanged() {
        let store = tempfile::tempdir().unwrap();
        let input =
            br#"{"ociVersion":"1.0.2","root":{"path":"/x"},"annotations":{"a":"b"},"extra":[1,2]}"#;
        let mut out = Vec::new();
        precreate(store.path(), &mut &input[..], &mut out).unwrap();
        let a: Value = serde_json::from_slice(input).unwrap();
        let b: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn malformed_input_is_a_coded_error() {
        use crate::error::Coded;
        let store = tempfile::tempdir().unwrap();
        for bad in [&b"{"[..], b"[]", b"null", b"\xff\xfe"] {
            let e = precreate(store.path(), &mut &bad[..], &mut Vec::new()).unwrap_err();
            assert_eq!(e.code(), "FK0806", "{bad:?}");
            let e = poststop(store.path(), &mut &bad[..]).unwrap_err();
            assert_eq!(e.code(), "FK0806", "{bad:?}");
        }
        let bad = br#"{"annotations":{"io.fukastor.image":"x"},"root":"nope"}"#;
        let e = precreate(store.path(), &mut &bad[..], &mut Vec::new()).unwrap_err();
        assert_eq!(e.code(), "FK0806");
        // Nothing was created.
        assert!(!store.path().join("fukastor/containers").exists());
    }

    #[test]
    fn podman_ids_are_found_and_checked() {
        let id = "a".repeat(64);
        let c: Value = serde_json::from_str(&format!(
            r#"{{"mounts":[{{"source":"/var/lib/containers/storage/overlay-containers/{id}/userdata/hosts"}}]}}"#
        ))
        .unwrap();
        assert_eq!(podman_id(&c).as_deref(), Some(id.as_str()));
        let c: Value = serde_json::from_str(&format!(
            r#"{{"linux":{{"cgroupsPath":"machine.slice:libpod:libpod-{id}.scope"}}}}"#
        ))
        .unwrap();
        assert_eq!(podman_id(&c).as_deref(), Some(id.as_str()));
        let c: Value = serde_json::from_str(
            r#"{"mounts":[{"source":"/x/overlay-containers/../../etc/userdata"}]}"#,
        )
        .unwrap();
        assert_eq!(podman_id(&c), None);
        assert!(!is_container_id("../../etc/passwd"));
    }

    #[test]
    fn poststop_of_a_foreign_container_does_nothing() {
        let store = tempfile::tempdir().unwrap();
        let state = br#"{"ociVersion":"1.0.2","id":"x","status":"stopped","annotations":{}}"#;
        poststop(store.path(), &mut &state[..]).unwrap();
    }
}
