//! Finds the protobuf descriptor of the waproto crate this workspace builds
//! (`waproto-<version>/src/whatsapp.desc` in Cargo's registry sources) and copies
//! it to `OUT_DIR`, so that a send request can give any `waE2E.Message` as proto3
//! JSON (`raw.rs`). waproto does not export its descriptor; reading the one its
//! own build used keeps the simulator's schema the one its members encode with.

use std::path::{Path, PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let lock = manifest_dir.join("../../Cargo.lock");
    println!("cargo:rerun-if-changed={}", lock.display());
    let version = waproto_version(&lock);
    let source = find_descriptor(&version).unwrap_or_else(|| {
        panic!(
            "wa-sim: no waproto-{version}/src/whatsapp.desc under $CARGO_HOME/registry/src \
             (run `cargo fetch --locked` first)"
        )
    });
    println!("cargo:rerun-if-changed={}", source.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets it")).join("whatsapp.desc");
    std::fs::copy(&source, &out).expect("copying the waproto descriptor");
}

/// The waproto version locked for the workspace.
fn waproto_version(lock: &Path) -> String {
    let text = std::fs::read_to_string(lock).expect("reading Cargo.lock");
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"waproto\""
            && let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = \""))
        {
            return version.trim_end_matches('"').to_string();
        }
    }
    panic!("wa-sim: Cargo.lock locks no waproto");
}

fn find_descriptor(version: &str) -> Option<PathBuf> {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))?;
    let registries = std::fs::read_dir(cargo_home.join("registry/src")).ok()?;
    registries
        .filter_map(Result::ok)
        .map(|registry| {
            registry
                .path()
                .join(format!("waproto-{version}/src/whatsapp.desc"))
        })
        .find(|path| path.is_file())
}
