//! Atomic file replacement: write a temp file in the same directory, fsync it, rename it over the
//! target, fsync the directory. A crash at any point leaves either the old file or the new one,
//! never a torn one; a failure removes the temp file and leaves the old file untouched.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path} atomically: {step}")]
pub struct AtomicWriteError {
    pub path: PathBuf,
    pub step: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Replaces `path` with `bytes`, mode `mode`, so that readers and crashes see old or new only.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    let err = |step: &'static str| {
        let path = path.to_path_buf();
        move |source| AtomicWriteError { path, step, source }
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))
        .map_err(err("checking the file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{:08x}",
        name.to_string_lossy(),
        std::process::id(),
        crate::random_u32()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(err("creating the temp file"))?;
        // The umask may have narrowed the mode given to open(2).
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err("setting the mode"))?;
        f.write_all(bytes).map_err(err("writing"))?;
        f.sync_all().map_err(err("syncing the file"))?;
        fs::rename(&tmp, path).map_err(err("renaming into place"))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_dir(dir).map_err(err("syncing the directory"))
}

/// fsyncs a directory so a rename or a new entry in it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Makes a file someone else wrote (cloud-init's `write_files` does not fsync) survive a power
/// cut: fsyncs its data, then every directory from its parent up to `/`, so neither its bytes
/// nor its name can be lost. Reads only; the file is not changed.
pub fn make_durable(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()?;
    for dir in path
        .ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
    {
        sync_dir(dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn replaces_content_and_sets_mode_without_leftovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("state.json");
        write_atomic(&p, b"old", 0o600).expect("first write");
        write_atomic(&p, b"new", 0o640).expect("second write");
        assert_eq!(fs::read(&p).expect("read"), b"new");
        assert_eq!(fs::metadata(&p).expect("meta").mode() & 0o777, 0o640);
        let names: Vec<_> = fs::read_dir(dir.path()).expect("ls").collect();
        assert_eq!(names.len(), 1, "temp files left behind");
    }

    #[test]
    fn failure_keeps_the_old_file_and_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("x");
        write_atomic(&p, b"old", 0o600).expect("write");
        // A directory in the way of the rename makes the last step fail.
        let blocked = dir.path().join("blocked");
        fs::create_dir(&blocked).expect("mkdir");
        fs::write(blocked.join("f"), b"").expect("fill");
        let err = write_atomic(&blocked, b"new", 0o600).expect_err("must be refused");
        assert!(err.to_string().contains("blocked"), "{err}");
        assert_eq!(fs::read(&p).expect("read"), b"old");
        let temps = fs::read_dir(dir.path())
            .expect("ls")
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.file_name().to_string_lossy().contains(".tmp-"))
                    .unwrap_or(false)
            })
            .count();
        assert_eq!(temps, 0);
    }

    #[test]
    fn make_durable_leaves_the_file_as_it_was_and_names_a_missing_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("secret");
        write_atomic(&path, b"abc", 0o600).expect("write");
        let before = fs::metadata(&path).expect("metadata");
        make_durable(&path).expect("durable");
        let after = fs::metadata(&path).expect("metadata");
        assert_eq!(fs::read(&path).expect("read"), b"abc");
        assert_eq!(before.mode(), after.mode());
        assert_eq!(before.mtime(), after.mtime());
        let missing = make_durable(&dir.path().join("absent")).expect_err("absent");
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
