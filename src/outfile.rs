//! Output files written whole or not at all. Every file neuroloop writes as a result (a
//! model, a report, a recording, a plot) goes through a temporary file in the same folder
//! that is synced and then renamed over the destination: a full disk, a crash or a kill
//! mid-write leaves the previous file at the path as it was, never half of a new one.
//! Long jobs check their outputs first ([`ensure_writable`]), so that a fit or a session
//! does not find out at its end that its result cannot be written.

use anyhow::Context;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The folder `path` is in ("." for a bare file name).
fn folder_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A temporary file next to `path`: same folder (so the rename cannot cross file systems),
/// hidden, named after the destination and this process.
fn temp_path(path: &Path) -> PathBuf {
    static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path.file_name().map_or("output".into(), |n| n.to_string_lossy().into_owned());
    let serial = SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    folder_of(path).join(format!(".{name}.{}-{serial}.partial", std::process::id()))
}

/// Where a long streamed output (a recording) is written until it is complete: next to
/// `path`, visible, `<name>.partial` (or `<name>.<pid>.partial` when that is taken by an
/// earlier session's leftover, which is never overwritten). Created here, empty.
pub fn create_partial(path: &Path) -> std::io::Result<(File, PathBuf)> {
    let name = path.file_name().map_or("output".into(), |n| n.to_string_lossy().into_owned());
    let first = folder_of(path).join(format!("{name}.partial"));
    match File::create_new(&first) {
        Ok(f) => Ok((f, first)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let second = folder_of(path).join(format!("{name}.{}.partial", std::process::id()));
            File::create_new(&second).map(|f| (f, second))
        }
        Err(e) => Err(e),
    }
}

/// Moves a complete output from its temporary path over `path` and syncs the folder (the
/// data itself must be synced already).
pub fn rename_into_place(tmp: &Path, path: &Path) -> std::io::Result<()> {
    std::fs::rename(tmp, path)?;
    if let Ok(dir) = File::open(folder_of(path)) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Check before a long job that `path` can be written: it is not a folder, its folder
/// exists and accepts a new file. Nothing is created at `path` and an existing file there is
/// left untouched (it is replaced only when the new one is whole).
pub fn ensure_writable(path: &Path, what: &str) -> anyhow::Result<()> {
    let fail = |why: String| {
        anyhow::anyhow!("cannot write the {what} to {}: {why} (checked before starting, so nothing is lost at the end)", path.display())
    };
    if path.as_os_str().is_empty() {
        return Err(fail("the path is empty".into()));
    }
    if path.is_dir() {
        return Err(fail("it is a folder; give a file name".into()));
    }
    let folder = folder_of(path);
    if !folder.is_dir() {
        return Err(fail(format!("its folder {} does not exist", folder.display())));
    }
    let probe = temp_path(path);
    match File::create_new(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(fail(format!("its folder {} does not accept new files ({e})", folder.display()))),
    }
}

/// Writes `bytes` to `path` whole or not at all (see the module's doc).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.write_all(bytes)?;
    f.commit()
}

/// [`write_atomic`] for the callers that report with anyhow: says which file and what it was.
pub fn write_output(path: &Path, bytes: &[u8], what: &str) -> anyhow::Result<()> {
    write_atomic(path, bytes)
        .with_context(|| format!("cannot write the {what} to {} (any previous file there is unchanged)", path.display()))
}

/// A file being written through a temporary file: [`commit`](AtomicFile::commit) syncs it
/// and renames it over the destination; dropped without a commit (an error, a panic), the
/// temporary file is removed and the destination is untouched.
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    path: PathBuf,
}

impl AtomicFile {
    pub fn create(path: &Path) -> std::io::Result<AtomicFile> {
        let tmp = temp_path(path);
        let file = File::create_new(&tmp)?;
        Ok(AtomicFile { file: Some(file), tmp, path: path.to_path_buf() })
    }

    /// Sync the data, rename it over the destination, sync the folder (so the rename
    /// survives a power cut).
    pub fn commit(mut self) -> std::io::Result<()> {
        // On an error here the file stays in `self.file`: dropped, it removes the temporary.
        self.file.as_ref().expect("committed once").sync_all()?;
        rename_into_place(&self.tmp, &self.path)?;
        self.file = None;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.as_mut().expect("not committed").write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.as_mut().expect("not committed").flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_the_old_file_whole_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        std::fs::write(&path, b"old model").unwrap();
        {
            let mut f = AtomicFile::create(&path).unwrap();
            f.write_all(b"half of a new").unwrap();
            // dropped without a commit: a write error or a panic part-way
        }
        assert_eq!(std::fs::read(&path).unwrap(), b"old model");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "the temporary file is removed");
        write_atomic(&path, b"new model").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new model");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn outputs_are_checked_before_a_job_without_creating_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.json");
        ensure_writable(&path, "report").unwrap();
        assert!(!path.exists(), "the check creates nothing at the path");
        let e = ensure_writable(dir.path(), "model").unwrap_err().to_string();
        assert!(e.contains("it is a folder"), "{e}");
        let e = ensure_writable(&dir.path().join("no/such/out.json"), "report").unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        // A read-only folder (root ignores permissions: then the check passes, rightly).
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
        let probe = ro.join("x");
        if File::create(&probe).is_err() {
            let e = ensure_writable(&ro.join("m.safetensors"), "model").unwrap_err().to_string();
            assert!(e.contains("does not accept new files"), "{e}");
        } else {
            let _ = std::fs::remove_file(&probe);
        }
    }
}
