//! Private files and directories of the state directory: created owner-only (0600 /
//! 0700) from the start, never widened afterwards.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Creates `dir` (and parents) with mode 0700, or tightens an existing one to 0700.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` with mode 0600, replacing it atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// Creates the SQLite database file `path` with mode 0600 if missing, and tightens it
/// and its leftover `-wal`, `-shm` and `-journal` files to 0600 if group or others had
/// any access. On failure, returns the file it failed on with the error.
pub fn prepare_private_sqlite_file(path: &Path) -> Result<(), (PathBuf, io::Error)> {
    let on = |file: &Path| {
        let file = file.to_path_buf();
        move |error| (file, error)
    };
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(on(path))?;
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        if file.exists() {
            files.push(file);
        }
    }
    for file in files {
        let mode = fs::metadata(&file).map_err(on(&file))?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).map_err(on(&file))?;
            tracing::info!(path = %file.display(), "tightened a database file to mode 0600");
        }
    }
    Ok(())
}

/// Reads a secret from `path`, creating it first (32 random bytes as hex, mode 0600)
/// when it does not exist.
pub fn read_or_create(path: &Path) -> io::Result<String> {
    match fs::read_to_string(path) {
        Ok(secret) => Ok(secret.trim().to_string()),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            let mut random = [0u8; 32];
            fs::File::open("/dev/urandom")?.read_exact(&mut random)?;
            let secret: String = random.iter().map(|b| format!("{b:02x}")).collect();
            write_private(path, secret.as_bytes())?;
            Ok(secret)
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        create_private_dir(&state).unwrap();
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let path = state.join("key");
        let first = read_or_create(&path).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(read_or_create(&path).unwrap(), first);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn loose_state_dir_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&state).unwrap();
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
